//! WireGuard per-packet costs through an established boringtun session:
//! encapsulate and decapsulate of IP packets of 64 and 1420 bytes, and the
//! demux of a data datagram on a shared socket.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::net::SocketAddr;
use tunnel::{wg, Demux, Identifier, Out, StaticKeys, WgPeer};

const SIZES: [usize; 2] = [64, 1420];

fn ep(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

/// Two peers with a session, handshake done back to back in memory (as the
/// crate's tests do). `a` initiated and is the client side (index 1), `b` the
/// server side (index 5).
struct Session {
    a: WgPeer,
    b: WgPeer,
    b_keys: StaticKeys,
}

fn session() -> Session {
    let a_keys = StaticKeys::from_private([11u8; 32]);
    let b_keys = StaticKeys::from_private([22u8; 32]);
    let mut a = WgPeer::new(&a_keys, b_keys.public.to_bytes(), 1, None, Some(ep(2)));
    let mut b = WgPeer::new(&b_keys, a_keys.public.to_bytes(), 5, None, None);
    let mut buf = vec![0u8; wg::BUF_SIZE];
    let first = common::data_packet(64);
    let init = a
        .encapsulate(&first, &mut buf)
        .expect("encapsulate")
        .expect("initiation")
        .to_vec();
    let mut resp = Vec::new();
    b.decapsulate(ep(1), &init, &mut buf, |o| {
        if let Out::Network(p) = o {
            resp.push(p.to_vec())
        }
    })
    .expect("initiation accepted");
    let mut to_b = Vec::new();
    for r in resp {
        a.decapsulate(ep(2), &r, &mut buf, |o| {
            if let Out::Network(p) = o {
                to_b.push(p.to_vec())
            }
        })
        .expect("response accepted");
    }
    let mut delivered = 0;
    for d in to_b {
        b.decapsulate(ep(1), &d, &mut buf, |o| {
            if let Out::Tunnel(_) = o {
                delivered += 1
            }
        })
        .expect("queued packet accepted");
    }
    assert_eq!(delivered, 1, "queued packet delivered after the handshake");
    assert!(a.time_since_handshake().is_some() && b.time_since_handshake().is_some());
    Session { a, b, b_keys }
}

fn encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("wg_encapsulate");
    for size in SIZES {
        // A fresh session per case: sessions expire after 180 s.
        let mut s = session();
        let pkt = common::data_packet(size);
        let mut buf = vec![0u8; wg::BUF_SIZE];
        let n =
            s.a.encapsulate(&pkt, &mut buf)
                .expect("encapsulate")
                .expect("data packet")
                .len();
        assert_eq!(n, size + wg::WG_OVERHEAD);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |bch| {
            bch.iter(|| {
                let r = s.a.encapsulate(black_box(&pkt), &mut buf);
                black_box(matches!(r, Ok(Some(_))))
            })
        });
    }
    g.finish();
}

fn decapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("wg_decapsulate");
    for size in SIZES {
        let Session { mut a, mut b, .. } = session();
        let pkt = common::data_packet(size);
        let mut buf_a = vec![0u8; wg::BUF_SIZE];
        let mut buf_b = vec![0u8; wg::BUF_SIZE];
        let (mut calls, mut ok, mut bad) = (0u64, 0u64, 0u64);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |bch| {
            // Each datagram can be opened once (replay window): encrypt a batch
            // untimed, then time opening it in order.
            bch.iter_batched_ref(
                || {
                    a.encapsulate(&pkt, &mut buf_a)
                        .expect("encapsulate")
                        .expect("data packet")
                        .to_vec()
                },
                |d| {
                    calls += 1;
                    let r = b.decapsulate(ep(1), black_box(d), &mut buf_b, |o| {
                        if let Out::Tunnel(p) = o {
                            black_box(p);
                            ok += 1;
                        }
                    });
                    if r.is_err() {
                        bad += 1;
                    }
                },
                BatchSize::NumIterations(512),
            )
        });
        assert_eq!(bad, 0, "decapsulate failed {bad} times");
        assert_eq!(ok, calls, "every datagram opened to one IP packet");
    }
    g.finish();
}

fn identify(c: &mut Criterion) {
    let mut g = c.benchmark_group("wg_identify");
    let mut s = session();
    let ident = Identifier::new(s.b_keys.clone());
    let mut buf = vec![0u8; wg::BUF_SIZE];
    let d =
        s.a.encapsulate(&common::data_packet(1420), &mut buf)
            .expect("encapsulate")
            .expect("data packet")
            .to_vec();
    assert_eq!(ident.identify(&d), Some(Demux::Index(5)));
    g.throughput(Throughput::Elements(1));
    g.bench_function("data_datagram", |bch| {
        bch.iter(|| ident.identify(black_box(&d)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = encapsulate, decapsulate, identify
}
criterion_main!(benches);
