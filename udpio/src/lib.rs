//! Batched UDP I/O over quinn-udp: `recvmmsg` with UDP GRO on receive (one
//! syscall returns many datagrams, coalesced ones split by their stride), and
//! `sendmsg` with UDP GSO on send (one syscall for a run of equal-size
//! datagrams). Falls back to one datagram per send where the kernel has no GSO.

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tunnel::DatagramBatch;

/// Receive buffers per `recvmmsg`.
pub const RECV_BATCH: usize = 16;
/// One receive buffer: a GRO-coalesced train is at most 64 KiB.
pub const RECV_SLOT: usize = 65536;

/// Sets up batched I/O on a socket (and sets its buffer sizes).
pub fn state(sock: &UdpSocket, buffer: usize) -> io::Result<UdpSocketState> {
    let st = UdpSocketState::new(sock.into())?;
    let _ = st.set_recv_buffer_size(sock.into(), buffer);
    let _ = st.set_send_buffer_size(sock.into(), buffer);
    Ok(st)
}

/// Reusable receive buffers.
pub struct RecvBufs {
    slots: Vec<Vec<u8>>,
    meta: [RecvMeta; RECV_BATCH],
}

impl Default for RecvBufs {
    fn default() -> Self {
        RecvBufs {
            slots: (0..RECV_BATCH).map(|_| vec![0u8; RECV_SLOT]).collect(),
            meta: [RecvMeta::default(); RECV_BATCH],
        }
    }
}

impl RecvBufs {
    /// One non-blocking batched receive; `f(from, datagram)` for every datagram.
    /// `Err(WouldBlock)`: nothing queued (readiness is cleared).
    pub fn try_recv(
        &mut self,
        sock: &UdpSocket,
        st: &UdpSocketState,
        mut f: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let RecvBufs { slots, meta } = self;
        let n = {
            let mut iovs: [IoSliceMut<'_>; RECV_BATCH] = {
                let mut it = slots.iter_mut();
                std::array::from_fn(|_| {
                    IoSliceMut::new(it.next().map(|s| &mut s[..]).unwrap_or(&mut []))
                })
            };
            sock.try_io(Interest::READABLE, || st.recv(sock.into(), &mut iovs, meta))?
        };
        let mut count = 0;
        for (m, slot) in meta.iter().zip(slots.iter()).take(n) {
            let data = &slot[..m.len.min(slot.len())];
            let stride = if m.stride == 0 {
                data.len().max(1)
            } else {
                m.stride
            };
            for d in data.chunks(stride) {
                f(m.addr, d);
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Sends every datagram of `batch` to `dst` (GSO groups), waiting for room in
/// the socket buffer when it is full. Errors other than a full buffer drop
/// the group (as a lost datagram would be) and are returned last.
pub async fn send_batch(
    sock: &UdpSocket,
    st: &UdpSocketState,
    dst: SocketAddr,
    batch: &DatagramBatch,
) -> io::Result<()> {
    let mut last = Ok(());
    for g in batch.groups(st.max_gso_segments()) {
        let t = Transmit {
            destination: dst,
            ecn: None,
            contents: g.contents,
            segment_size: (g.count > 1).then_some(g.segment),
            src_ip: None,
        };
        if let Err(e) = send_one(sock, st, &t).await {
            if g.count > 1 {
                // GSO refused (quinn-udp now sends without it): datagram by datagram
                for d in g.contents.chunks(g.segment) {
                    let t = Transmit {
                        destination: dst,
                        ecn: None,
                        contents: d,
                        segment_size: None,
                        src_ip: None,
                    };
                    if let Err(e) = send_one(sock, st, &t).await {
                        last = Err(e);
                    }
                }
            } else {
                last = Err(e);
            }
        }
    }
    last
}

async fn send_one(sock: &UdpSocket, st: &UdpSocketState, t: &Transmit<'_>) -> io::Result<()> {
    loop {
        match sock.try_io(Interest::WRITABLE, || st.try_send(sock.into(), t)) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
            Err(e) => return Err(e),
        }
    }
}
