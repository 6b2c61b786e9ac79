//! Small IPv4 helpers on raw bytes: classify a packet, build UDP and ICMP
//! echo replies, clamp the TCP MSS of SYNs. Every function checks lengths
//! first: the bytes come from the network.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The parts of an IPv4 packet the flow code needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Header length in bytes.
    pub ihl: usize,
    /// Total length (<= the buffer length).
    pub total: usize,
    /// A fragment (MF set or offset != 0).
    pub fragment: bool,
}

/// Parses an IPv4 header. `None` for anything that is not a complete IPv4 packet.
pub fn ipv4(p: &[u8]) -> Option<Ipv4Info> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return None;
    }
    let frag = u16::from_be_bytes([p[6], p[7]]);
    Some(Ipv4Info {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        proto: p[9],
        ihl,
        total,
        fragment: frag & 0x2000 != 0 || frag & 0x1fff != 0,
    })
}

/// TCP ports and flags of a TCP packet: (src port, dst port, flags).
pub fn tcp_ports(p: &[u8], ip: &Ipv4Info) -> Option<(u16, u16, u8)> {
    let t = p.get(ip.ihl..ip.total)?;
    if t.len() < 20 {
        return None;
    }
    Some((
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        t[13],
    ))
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A UDP datagram: (src port, dst port, payload).
pub fn udp<'a>(p: &'a [u8], ip: &Ipv4Info) -> Option<(u16, u16, &'a [u8])> {
    let u = p.get(ip.ihl..ip.total)?;
    if u.len() < 8 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if len < 8 || len > u.len() {
        return None;
    }
    Some((
        u16::from_be_bytes([u[0], u[1]]),
        u16::from_be_bytes([u[2], u[3]]),
        &u[8..len],
    ))
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

fn write_ipv4_header(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize) {
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[4..6].copy_from_slice(&0u16.to_be_bytes());
    out[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    out[8] = 64;
    out[9] = proto;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Builds an IPv4/UDP packet into `out` (cleared first). Payloads that do not
/// fit in one IPv4 packet are refused (`false`).
pub fn build_udp(out: &mut Vec<u8>, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> bool {
    let total = 28 + payload.len();
    if total > 65535 {
        return false;
    }
    out.clear();
    out.resize(total, 0);
    write_ipv4_header(out, *src.ip(), *dst.ip(), PROTO_UDP, total);
    let ulen = (8 + payload.len()) as u16;
    out[20..22].copy_from_slice(&src.port().to_be_bytes());
    out[22..24].copy_from_slice(&dst.port().to_be_bytes());
    out[24..26].copy_from_slice(&ulen.to_be_bytes());
    out[26..28].copy_from_slice(&[0, 0]);
    out[28..].copy_from_slice(payload);
    // pseudo header
    let mut acc = sum16(&src.ip().octets(), 0);
    acc = sum16(&dst.ip().octets(), acc);
    acc += u32::from(PROTO_UDP) + u32::from(ulen);
    acc = sum16(&out[20..], acc);
    let mut c = fold(acc);
    if c == 0 {
        c = 0xffff;
    }
    out[26..28].copy_from_slice(&c.to_be_bytes());
    true
}

/// If `p` is an ICMP echo request, writes the echo reply into `out` and returns true.
pub fn icmp_echo_reply(p: &[u8], ip: &Ipv4Info, out: &mut Vec<u8>) -> bool {
    if ip.proto != PROTO_ICMP || ip.fragment {
        return false;
    }
    let Some(icmp) = p.get(ip.ihl..ip.total) else {
        return false;
    };
    if icmp.len() < 8 || icmp[0] != 8 || icmp[1] != 0 {
        return false;
    }
    let total = 20 + icmp.len();
    out.clear();
    out.resize(total, 0);
    write_ipv4_header(out, ip.dst, ip.src, PROTO_ICMP, total);
    out[20..].copy_from_slice(icmp);
    out[20] = 0; // echo reply
    out[22..24].copy_from_slice(&[0, 0]);
    let c = checksum(&out[20..]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    true
}

/// Lowers the MSS option of an IPv4 TCP SYN to `max_mss` (fixing the TCP
/// checksum incrementally). Returns true if the packet was changed.
pub fn clamp_mss(p: &mut [u8], max_mss: u16) -> bool {
    let Some(ip) = ipv4(p) else { return false };
    if ip.proto != PROTO_TCP || ip.fragment {
        return false;
    }
    let Some(t) = p.get_mut(ip.ihl..ip.total) else {
        return false;
    };
    if t.len() < 20 || t[13] & TCP_SYN == 0 {
        return false;
    }
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || doff > t.len() {
        return false;
    }
    let mut i = 20;
    while i < doff {
        match t[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = t.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > doff {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([t[i + 2], t[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    t[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    // RFC 1624: HC' = ~(~HC + ~m + m')
                    let hc = u16::from_be_bytes([t[16], t[17]]);
                    let mut acc = u32::from(!hc) + u32::from(!old) + u32::from(max_mss);
                    while acc > 0xffff {
                        acc = (acc & 0xffff) + (acc >> 16);
                    }
                    let new = !(acc as u16);
                    t[16..18].copy_from_slice(&new.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// The MSS that fits a tunnel MTU (IPv4 and TCP headers without options).
pub fn mss_for_mtu(mtu: u16) -> u16 {
    mtu.saturating_sub(40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};

    fn syn(mss: u16) -> Vec<u8> {
        let mut p = vec![0u8; 44];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&44u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&1234u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 6 << 4;
        t[13] = TCP_SYN;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t[20] = 2;
        t[21] = 4;
        t[22..24].copy_from_slice(&mss.to_be_bytes());
        let mut tp = TcpPacket::new_unchecked(&mut p[20..]);
        tp.fill_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2));
        p
    }

    #[test]
    fn mss_is_clamped_and_checksum_stays_valid() {
        let mut p = syn(1460);
        assert!(clamp_mss(&mut p, 1380));
        let tp = TcpPacket::new_checked(&p[20..]).unwrap();
        assert!(tp.verify_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2)));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1380);
        // already small enough: untouched
        let mut q = syn(1200);
        assert!(!clamp_mss(&mut q, 1380));
        // truncated garbage never panics
        for n in 0..p.len() {
            let mut r = p[..n].to_vec();
            let _ = clamp_mss(&mut r, 1000);
        }
    }

    #[test]
    fn udp_and_icmp_build_valid_packets() {
        let mut out = Vec::new();
        let s = SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 1), 53);
        let d = SocketAddrV4::new(Ipv4Addr::new(10, 2, 2, 2), 4444);
        assert!(build_udp(&mut out, s, d, b"hello"));
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert!(ip.verify_checksum());
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&IpAddress::Ipv4(*s.ip()), &IpAddress::Ipv4(*d.ip())));
        assert_eq!(u.payload(), b"hello");
        let info = ipv4(&out).unwrap();
        assert_eq!(udp(&out, &info).unwrap(), (53, 4444, &b"hello"[..]));

        // an echo request to anyone is answered from that address
        let mut req = vec![0u8; 28];
        req[0] = 0x45;
        req[2..4].copy_from_slice(&28u16.to_be_bytes());
        req[9] = 1;
        req[12..16].copy_from_slice(&[10, 0, 0, 1]);
        req[16..20].copy_from_slice(&[8, 8, 4, 4]);
        req[20] = 8;
        req[24..28].copy_from_slice(&[0, 1, 0, 7]);
        let info = ipv4(&req).unwrap();
        let mut rep = Vec::new();
        assert!(icmp_echo_reply(&req, &info, &mut rep));
        let ip = Ipv4Packet::new_checked(&rep[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(8, 8, 4, 4));
        assert_eq!(checksum(&rep[20..]), 0);
        let _ = ChecksumCapabilities::default();
        for n in 0..req.len() {
            let _ = ipv4(&req[..n]).map(|i| icmp_echo_reply(&req[..n], &i, &mut rep));
        }
    }
}
