//! Raw IPv4 helpers on every packet: the Internet checksum of a 1420-byte
//! packet, the MSS clamp of a SYN (rewrite plus incremental checksum), and
//! the same clamp on a data packet (its per-packet cost when nothing changes).

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::net::SocketAddrV4;
use tunnel::packet;

fn checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    let p = common::data_packet(1420);
    g.throughput(Throughput::Bytes(1420));
    g.bench_function("1420B", |b| b.iter(|| packet::checksum(black_box(&p))));
    g.finish();
}

fn clamp_mss(c: &mut Criterion) {
    let mut g = c.benchmark_group("clamp_mss");
    g.throughput(Throughput::Elements(1));
    // A SYN from a container on a 1500-byte link (MSS 1460) into the 1420 tunnel.
    let syn = common::tcp_segment(
        SocketAddrV4::new(common::PEER_IP, 40000),
        common::SERVICE,
        1,
        0,
        packet::TCP_SYN,
        &common::syn_options(1460),
        0,
    );
    let syn: [u8; 48] = syn.try_into().expect("48-byte SYN");
    let max = packet::mss_for_mtu(1420);
    {
        let mut s = syn;
        assert!(packet::clamp_mss(&mut s, max));
    }
    g.bench_function("syn_rewrite", |b| {
        b.iter_batched_ref(
            || syn,
            |s| packet::clamp_mss(black_box(s), max),
            BatchSize::NumIterations(4096),
        )
    });
    let mut data = common::data_packet(1420);
    assert!(!packet::clamp_mss(&mut data, max));
    g.bench_function("data_1420B_untouched", |b| {
        b.iter(|| packet::clamp_mss(black_box(&mut data), max))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = checksum, clamp_mss
}
criterion_main!(benches);
