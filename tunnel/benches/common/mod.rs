//! Shared by the benches: criterion settings and raw IPv4/TCP packet builders.
//! Every bench file uses a different subset.
#![allow(dead_code)]

use criterion::Criterion;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tunnel::packet;

/// Short runs: the whole `cargo bench -p gefyra-tunnel` stays within a few minutes
/// on a busy 2-core VM.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .noise_threshold(0.05)
}

/// The peer's tunnel address (a dev container / client side).
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 2);
/// The stack's own tunnel address (stowaway's side).
pub const OWN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 1);
/// A cluster service the peer dials.
pub const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// MSS that fits the 1420-byte tunnel MTU.
pub const MSS: usize = 1380;

/// SYN options as Linux sends them, minus SACK and timestamps: MSS, NOP, window scale 7.
pub fn syn_options(mss: u16) -> [u8; 8] {
    let m = mss.to_be_bytes();
    [2, 4, m[0], m[1], 1, 3, 3, 7]
}

/// An IPv4/TCP packet with valid IP and TCP checksums and a deterministic payload.
/// `options` must be a multiple of 4 bytes.
pub fn tcp_segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let tcp_len = 20 + options.len() + payload_len;
    let total = 20 + tcp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    p[8] = 64;
    p[9] = packet::PROTO_TCP;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let c = packet::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    {
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&src.port().to_be_bytes());
        t[2..4].copy_from_slice(&dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = (((20 + options.len()) / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t[20..20 + options.len()].copy_from_slice(options);
        for (i, b) in t[20 + options.len()..].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
    }
    fill_tcp_checksum(&mut p);
    p
}

/// Recomputes the TCP checksum of an IPv4 packet with a 20-byte header.
pub fn fill_tcp_checksum(p: &mut [u8]) {
    p[36..38].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(12 + p.len() - 20);
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, packet::PROTO_TCP]);
    pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let c = packet::checksum(&pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
}

/// TCP sequence number of an IPv4 packet with a 20-byte header.
pub fn seq_of(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[24], p[25], p[26], p[27]])
}

pub fn set_seq(p: &mut [u8], seq: u32) {
    p[24..28].copy_from_slice(&seq.to_be_bytes());
}

pub fn set_ack(p: &mut [u8], ack: u32) {
    p[28..32].copy_from_slice(&ack.to_be_bytes());
}

pub fn tcp_flags(p: &[u8]) -> u8 {
    p[33]
}

/// TCP payload length of an IPv4 packet with a 20-byte header.
pub fn tcp_payload_len(p: &[u8]) -> usize {
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let doff = usize::from(p[32] >> 4) * 4;
    total - 20 - doff
}

/// A data segment (ACK|PSH) from the peer to `SERVICE` of exactly `total` IP bytes.
pub fn data_packet(total: usize) -> Vec<u8> {
    assert!(total >= 40);
    tcp_segment(
        SocketAddrV4::new(PEER_IP, 40000),
        SERVICE,
        1000,
        2000,
        packet::TCP_ACK | 0x08,
        &[],
        total - 40,
    )
}
