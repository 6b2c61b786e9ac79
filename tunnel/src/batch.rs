//! Datagrams written back to back into one reusable buffer, and the groups a
//! UDP GSO send (`UDP_SEGMENT`) can take at once: a run of datagrams of one
//! size, the last of which may be shorter. Sans-IO: the owner encrypts into
//! [`DatagramBatch::space`], commits, and sends each [`Group`] with one
//! `sendmsg` (or one per datagram where the kernel has no GSO).

/// Most bytes one GSO send may carry (the UDP length field is 16 bits).
pub const MAX_GSO_BYTES: usize = 65000;

/// Datagrams queued for one destination.
pub struct DatagramBatch {
    buf: Vec<u8>,
    used: usize,
    lens: Vec<usize>,
}

/// One send: `contents` holds `count` datagrams of `segment` bytes each (the
/// last may be shorter).
#[derive(Debug, PartialEq, Eq)]
pub struct Group<'a> {
    pub contents: &'a [u8],
    pub segment: usize,
    pub count: usize,
}

impl DatagramBatch {
    /// A batch holding up to `bytes` bytes of datagrams.
    pub fn new(bytes: usize) -> Self {
        DatagramBatch {
            buf: vec![0u8; bytes],
            used: 0,
            lens: Vec::with_capacity(256),
        }
    }

    /// The free tail to write the next datagram into, if at least `need`
    /// bytes are left (otherwise send and [`clear`](Self::clear) first).
    pub fn space(&mut self, need: usize) -> Option<&mut [u8]> {
        let free = &mut self.buf[self.used..];
        (free.len() >= need).then_some(free)
    }

    /// Takes the first `n` bytes of the last [`space`](Self::space) as a datagram.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.used + n <= self.buf.len());
        self.used += n;
        self.lens.push(n);
    }

    /// Copies a datagram in; `false` if it does not fit.
    pub fn push(&mut self, d: &[u8]) -> bool {
        match self.space(d.len()) {
            Some(s) => {
                s[..d.len()].copy_from_slice(d);
                self.commit(d.len());
                true
            }
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.lens.clear();
    }

    /// The sends that carry the batch, in order, at most `max_segments`
    /// datagrams each (1: no GSO, one datagram per send).
    pub fn groups(&self, max_segments: usize) -> Groups<'_> {
        Groups {
            batch: self,
            next: 0,
            off: 0,
            max_segments: max_segments.max(1),
        }
    }
}

/// Iterator over the [`Group`]s of a batch.
pub struct Groups<'a> {
    batch: &'a DatagramBatch,
    next: usize,
    off: usize,
    max_segments: usize,
}

impl<'a> Iterator for Groups<'a> {
    type Item = Group<'a>;

    fn next(&mut self) -> Option<Group<'a>> {
        let lens = &self.batch.lens;
        let first = *lens.get(self.next)?;
        let mut count = 1;
        let mut bytes = first;
        let mut i = self.next + 1;
        while i < lens.len() && count < self.max_segments {
            let l = lens[i];
            if l > first || bytes + l > MAX_GSO_BYTES {
                break;
            }
            count += 1;
            bytes += l;
            i += 1;
            if l < first {
                break; // a shorter datagram ends a group
            }
        }
        let g = Group {
            contents: &self.batch.buf[self.off..self.off + bytes],
            segment: first,
            count,
        };
        self.next = i;
        self.off += bytes;
        Some(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(b: &DatagramBatch, max: usize) -> Vec<(usize, usize, usize)> {
        b.groups(max)
            .map(|g| (g.contents.len(), g.segment, g.count))
            .collect()
    }

    #[test]
    fn groups_follow_gso_rules() {
        let mut b = DatagramBatch::new(1 << 20);
        for l in [100, 100, 100, 60, 100, 200, 200, 10] {
            assert!(b.push(&vec![l as u8; l]));
        }
        assert_eq!(
            shape(&b, 64),
            vec![(360, 100, 4), (100, 100, 1), (410, 200, 3)]
        );
        // without GSO: one datagram per send, in order, bytes intact
        let singles: Vec<Vec<u8>> = b.groups(1).map(|g| g.contents.to_vec()).collect();
        assert_eq!(singles.len(), 8);
        assert_eq!(singles[3], vec![60u8; 60]);
        assert_eq!(singles[7], vec![10u8; 10]);
        // segment count limit
        assert_eq!(shape(&b, 2)[0], (200, 100, 2));
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.groups(64).count(), 0);
    }

    #[test]
    fn groups_stay_under_the_udp_limit_and_space_runs_out() {
        let mut b = DatagramBatch::new(200_000);
        let mut n = 0;
        while let Some(s) = b.space(1452) {
            s[..1452].fill(7);
            b.commit(1452);
            n += 1;
        }
        assert_eq!(n, 200_000 / 1452);
        let gs: Vec<_> = b.groups(1000).collect();
        assert!(gs.iter().all(|g| g.contents.len() <= MAX_GSO_BYTES));
        assert_eq!(gs.iter().map(|g| g.count).sum::<usize>(), n);
        assert_eq!(gs[0].count, MAX_GSO_BYTES / 1452);
    }
}
