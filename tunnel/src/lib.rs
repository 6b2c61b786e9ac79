//! gefyra's packet path, sans-IO: a WireGuard peer ([`wg`]) over boringtun,
//! a per-peer smoltcp stack that ends TCP for any destination and hands UDP
//! and ICMP to its owner ([`stack`]), and raw IPv4 helpers ([`packet`]).
//! No sockets and no clock here: callers pass buffers and `Instant`s.
#![forbid(unsafe_code)]

pub mod batch;
pub mod packet;
pub mod stack;
pub mod wg;

pub use batch::{DatagramBatch, Group};
pub use stack::{FourTuple, Input, NetStack, StackConfig};
pub use wg::{Demux, Identifier, Out, StaticKeys, WgError, WgPeer};

/// smoltcp's TCP socket, for owners driving flows.
pub use smoltcp::iface::SocketHandle;
pub use smoltcp::socket::tcp::{Socket as TcpSocket, State as TcpState};

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::{Duration, Instant};

    /// One end: a WireGuard peer plus a stack.
    struct End {
        wg: WgPeer,
        stack: NetStack,
        addr: SocketAddr,
    }

    fn ends() -> (End, End) {
        let ck = StaticKeys::from_private([11u8; 32]);
        let sk = StaticKeys::from_private([22u8; 32]);
        let now = Instant::now();
        let client = End {
            wg: WgPeer::new(&ck, sk.public.to_bytes(), 1, Some(10), Some(sa(2))),
            stack: NetStack::new(StackConfig::new(Ipv4Addr::new(192, 168, 99, 2), 1420), now),
            addr: sa(1),
        };
        let server = End {
            wg: WgPeer::new(&sk, ck.public.to_bytes(), 5, None, None),
            stack: NetStack::new(StackConfig::new(Ipv4Addr::new(192, 168, 99, 1), 1420), now),
            addr: sa(2),
        };
        (client, server)
    }

    fn sa(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    /// Moves everything pending between the two ends once; returns new TCP flows seen by `b`
    /// and the number of datagrams moved.
    fn pump(
        a: &mut End,
        b: &mut End,
        now: Instant,
        new_at_b: &mut Vec<(SocketHandle, FourTuple)>,
    ) -> usize {
        let mut buf = vec![0u8; wg::BUF_SIZE];
        let mut wire: Vec<(bool, Vec<u8>)> = Vec::new(); // (to_b, datagram)
        a.stack.poll(now);
        b.stack.poll(now);
        while let Some(p) = a.stack.pop_output() {
            if let Ok(Some(d)) = a.wg.encapsulate(&p, &mut buf) {
                wire.push((true, d.to_vec()));
            }
            a.stack.recycle(p);
        }
        while let Some(p) = b.stack.pop_output() {
            if let Ok(Some(d)) = b.wg.encapsulate(&p, &mut buf) {
                wire.push((false, d.to_vec()));
            }
            b.stack.recycle(p);
        }
        let moved = wire.len();
        while let Some((to_b, d)) = wire.pop() {
            let (dst, from) = if to_b {
                (&mut *b, a.addr)
            } else {
                (&mut *a, b.addr)
            };
            let mut tun = Vec::new();
            let mut back = Vec::new();
            let _ = dst.wg.decapsulate(from, &d, &mut buf, |o| match o {
                Out::Network(p) => back.push(p.to_vec()),
                Out::Tunnel(p) => tun.push(p.to_vec()),
            });
            for p in tun {
                if let Input::NewTcp { handle, tuple } = dst.stack.input(&p) {
                    if to_b {
                        new_at_b.push((handle, tuple));
                    }
                }
            }
            for bk in back {
                wire.push((!to_b, bk));
            }
        }
        moved
    }

    #[test]
    fn tcp_transfer_back_to_back() {
        let (mut c, mut s) = ends();
        let now = Instant::now();
        let server_ep = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let h = c
            .stack
            .tcp_connect(
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 99, 2), 40000),
                server_ep,
            )
            .unwrap();
        let mut new = Vec::new();
        // deterministic payload, 4 MiB each way
        const N: usize = 4 << 20;
        let data: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
        let (mut sent_c, mut got_s, mut sent_s, mut got_c) =
            (0usize, Vec::new(), 0usize, Vec::new());
        let mut sh = None;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut t = now;
        for _ in 0..200_000 {
            t += Duration::from_micros(50);
            pump(&mut c, &mut s, t, &mut new);
            if sh.is_none() {
                if let Some((hh, tuple)) = new.first().copied() {
                    assert_eq!(tuple.local, server_ep);
                    assert_eq!(tuple.remote.ip(), &Ipv4Addr::new(192, 168, 99, 2));
                    sh = Some(hh);
                }
            }
            if sent_c < N && c.stack.tcp(h).may_send() {
                sent_c += c.stack.tcp_send(h, &data[sent_c..]);
            }
            if let Some(sh) = sh {
                if sent_s < N && s.stack.tcp(sh).may_send() {
                    sent_s += s.stack.tcp_send(sh, &data[sent_s..]);
                }
                let n = s.stack.tcp_recv(sh, &mut chunk);
                got_s.extend_from_slice(&chunk[..n]);
            }
            let n = c.stack.tcp_recv(h, &mut chunk);
            got_c.extend_from_slice(&chunk[..n]);
            if got_s.len() == N && got_c.len() == N {
                break;
            }
        }
        assert_eq!(new.len(), 1, "one flow");
        assert!(got_s == data, "server got {} bytes", got_s.len());
        assert!(got_c == data, "client got {} bytes", got_c.len());
        assert!(c.wg.time_since_handshake().is_some());
        // the server stack answers pings for any address
        let mut ping = vec![0u8; 28];
        ping[0] = 0x45;
        ping[2..4].copy_from_slice(&28u16.to_be_bytes());
        ping[9] = 1;
        ping[12..16].copy_from_slice(&[192, 168, 99, 2]);
        ping[16..20].copy_from_slice(&[10, 1, 2, 3]);
        ping[20] = 8;
        assert_eq!(s.stack.input(&ping), Input::EchoAnswered);
        let rep = s.stack.pop_output().unwrap();
        assert_eq!(&rep[12..16], &[10, 1, 2, 3]);
    }

    #[test]
    fn slow_receiver_bounds_memory() {
        // The server never reads: the client can only queue its socket buffers plus the
        // server's window, then must stop. Nothing grows past that.
        let (mut c, mut s) = ends();
        let now = Instant::now();
        let h = c
            .stack
            .tcp_connect(
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 99, 2), 40001),
                SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 81),
            )
            .unwrap();
        let mut new = Vec::new();
        let data = vec![0x5au8; 256 * 1024];
        let mut sent = 0usize;
        let mut t = now;
        for _ in 0..20_000 {
            t += Duration::from_micros(100);
            pump(&mut c, &mut s, t, &mut new);
            if c.stack.tcp(h).may_send() {
                sent += c.stack.tcp_send(h, &data);
            }
        }
        let cfg = StackConfig::new(Ipv4Addr::UNSPECIFIED, 1420);
        assert!(sent > 0);
        assert!(
            sent <= cfg.tcp_rx + cfg.tcp_tx,
            "sender was not held back: {sent}"
        );
        let (sh, _) = new[0];
        let queued = s.stack.tcp(sh).recv_queue();
        assert!(
            queued + 1024 >= cfg.tcp_rx,
            "receiver window full: {queued}"
        );
        // once the receiver reads, the sender continues
        let mut chunk = vec![0u8; 1 << 20];
        let n = s.stack.tcp_recv(sh, &mut chunk);
        assert_eq!(n, queued);
        for _ in 0..2000 {
            t += Duration::from_micros(100);
            pump(&mut c, &mut s, t, &mut new);
            if c.stack.tcp(h).may_send() {
                sent += c.stack.tcp_send(h, &data);
            }
        }
        assert!(
            sent > cfg.tcp_rx + cfg.tcp_tx - 2048,
            "sender continued: {sent}"
        );
    }
}

/// Rekey under boringtun's mock clock. Only built with `--features mock-clock`
/// (that feature must never reach the binaries).
#[cfg(all(test, feature = "mock-clock"))]
mod rekey_tests {
    use super::*;
    use mock_instant::MockClock;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn rekeys_after_120_s_and_data_keeps_flowing() {
        let a_keys = StaticKeys::from_private([31u8; 32]);
        let b_keys = StaticKeys::from_private([32u8; 32]);
        let ea = SocketAddr::from(([127, 0, 0, 1], 1));
        let eb = SocketAddr::from(([127, 0, 0, 1], 2));
        let mut a = WgPeer::new(&a_keys, b_keys.public.to_bytes(), 1, Some(5), Some(eb));
        let mut b = WgPeer::new(&b_keys, a_keys.public.to_bytes(), 2, None, None);
        let mut buf = vec![0u8; wg::BUF_SIZE];
        let mut buf2 = vec![0u8; wg::BUF_SIZE];
        let pkt = {
            let mut p = vec![0u8; 24];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&24u16.to_be_bytes());
            p
        };
        let mut delivered = 0usize;
        let mut handshakes = 0usize;
        // run 400 simulated seconds in 100 ms steps, one data packet per second
        for step in 0..4000u32 {
            MockClock::advance(Duration::from_millis(100));
            let mut to_b: Vec<Vec<u8>> = Vec::new();
            let mut to_a: Vec<Vec<u8>> = Vec::new();
            if let Some(d) = a.update_timers(&mut buf) {
                to_b.push(d.to_vec());
            }
            if let Some(d) = b.update_timers(&mut buf) {
                to_a.push(d.to_vec());
            }
            if step % 10 == 0 {
                if let Ok(Some(d)) = a.encapsulate(&pkt, &mut buf) {
                    to_b.push(d.to_vec());
                }
            }
            for _ in 0..4 {
                for d in std::mem::take(&mut to_b) {
                    if d.first() == Some(&1) {
                        handshakes += 1;
                    }
                    let _ = b.decapsulate(ea, &d, &mut buf2, |o| match o {
                        Out::Network(p) => to_a.push(p.to_vec()),
                        Out::Tunnel(_) => delivered += 1,
                    });
                }
                for d in std::mem::take(&mut to_a) {
                    let _ = a.decapsulate(eb, &d, &mut buf2, |o| {
                        if let Out::Network(p) = o {
                            to_b.push(p.to_vec())
                        }
                    });
                }
            }
        }
        assert!(handshakes >= 3, "rekeyed: {handshakes} handshakes in 400 s");
        assert!(delivered >= 395, "data kept flowing: {delivered}/400");
        assert!(a.time_since_handshake().unwrap() < Duration::from_secs(130));
    }
}
