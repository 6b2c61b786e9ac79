//! The WireGuard layer: one [`WgPeer`] per remote peer over boringtun's
//! `noise::Tunn`, and [`Identifier`] to tell several peers apart on one UDP
//! socket (by static key for a handshake initiation, by receiver index for
//! everything else). Sans-IO: buffers in, buffers out.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::net::SocketAddr;
use std::time::Duration;

/// Size of a scratch buffer big enough for any WireGuard operation on a
/// datagram of at most 64 KiB.
pub const BUF_SIZE: usize = 65536 + 64;
/// WireGuard data overhead (header 16 + tag 16); IPv4+UDP add 28 more on the wire.
pub const WG_OVERHEAD: usize = 32;
/// Peer indices are 24 bits (boringtun keeps 8 bits for the session).
pub const MAX_PEER_INDEX: u32 = (1 << 24) - 1;

/// What a WireGuard operation asks the caller to do.
#[derive(Debug)]
pub enum Out<'a> {
    /// Send these bytes to the peer's endpoint over UDP.
    Network(&'a [u8]),
    /// A decrypted IP packet from the peer.
    Tunnel(&'a [u8]),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WgError {
    #[error("wireguard: {0:?}")]
    Noise(String),
}

impl From<WireGuardError> for WgError {
    fn from(e: WireGuardError) -> Self {
        WgError::Noise(format!("{e:?}"))
    }
}

/// A static key pair.
#[derive(Clone)]
pub struct StaticKeys {
    pub secret: StaticSecret,
    pub public: PublicKey,
}

impl StaticKeys {
    pub fn from_private(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        StaticKeys { secret, public }
    }
}

/// Public key bytes of a private key.
pub fn public_key_of(private: [u8; 32]) -> [u8; 32] {
    StaticKeys::from_private(private).public.to_bytes()
}

/// Which peer a datagram belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demux {
    /// A handshake initiation from the peer with this static public key.
    Initiation([u8; 32]),
    /// Any other message: the peer index we gave to `WgPeer::new`.
    Index(u32),
}

/// Tells peers apart on a shared socket.
pub struct Identifier {
    keys: StaticKeys,
}

impl Identifier {
    pub fn new(keys: StaticKeys) -> Self {
        Identifier { keys }
    }

    /// `None`: not a WireGuard message for this key (count it, drop it, never answer).
    pub fn identify(&self, datagram: &[u8]) -> Option<Demux> {
        match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(p) => {
                let half = parse_handshake_anon(&self.keys.secret, &self.keys.public, &p).ok()?;
                Some(Demux::Initiation(half.peer_static_public))
            }
            Packet::HandshakeResponse(p) => Some(Demux::Index(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => Some(Demux::Index(p.receiver_idx >> 8)),
            Packet::PacketData(p) => Some(Demux::Index(p.receiver_idx >> 8)),
        }
    }
}

/// One WireGuard session with one remote peer.
pub struct WgPeer {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    peer_public: [u8; 32],
}

impl WgPeer {
    /// `index` (< 2^24) must be unique among the peers sharing a socket.
    pub fn new(
        own: &StaticKeys,
        peer_public: [u8; 32],
        index: u32,
        keepalive_secs: Option<u16>,
        endpoint: Option<SocketAddr>,
    ) -> Self {
        let tunn = Tunn::new(
            own.secret.clone(),
            PublicKey::from(peer_public),
            None,
            keepalive_secs.filter(|k| *k > 0),
            index & MAX_PEER_INDEX,
            None,
        );
        WgPeer {
            tunn,
            endpoint,
            peer_public,
        }
    }

    pub fn peer_public(&self) -> [u8; 32] {
        self.peer_public
    }

    /// The last authenticated source address of the peer (roaming follows it).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    pub fn set_endpoint(&mut self, ep: SocketAddr) {
        self.endpoint = Some(ep);
    }

    /// Encrypts one IP packet. `Ok(None)`: queued inside boringtun while a
    /// handshake runs (an initiation may have been returned instead).
    /// `buf` must be at least `ip.len() + 32` and 148 bytes.
    pub fn encapsulate<'b>(
        &mut self,
        ip: &[u8],
        buf: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, WgError> {
        if buf.len() < ip.len() + WG_OVERHEAD || buf.len() < 148 {
            return Err(WgError::Noise("buffer too small".into()));
        }
        match self.tunn.encapsulate(ip, buf) {
            TunnResult::WriteToNetwork(p) => Ok(Some(p)),
            TunnResult::Done => Ok(None),
            TunnResult::Err(e) => Err(e.into()),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => Ok(None),
        }
    }

    /// Handles one datagram from `from`. `f` gets every datagram to send back
    /// (handshake answers, packets queued during a handshake) and every
    /// decrypted IP packet. The endpoint follows the last authenticated source.
    pub fn decapsulate(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        mut f: impl FnMut(Out<'_>),
    ) -> Result<(), WgError> {
        let mut flush = false;
        match self.tunn.decapsulate(Some(from.ip()), datagram, buf) {
            TunnResult::Done => {
                self.endpoint = Some(from);
            }
            TunnResult::Err(e) => return Err(e.into()),
            TunnResult::WriteToNetwork(p) => {
                self.endpoint = Some(from);
                f(Out::Network(p));
                flush = true;
            }
            TunnResult::WriteToTunnelV4(p, _) => {
                self.endpoint = Some(from);
                f(Out::Tunnel(p));
            }
            TunnResult::WriteToTunnelV6(..) => {
                self.endpoint = Some(from);
            }
        }
        if flush {
            // Packets queued while the handshake ran.
            for _ in 0..1024 {
                match self.tunn.decapsulate(None, &[], buf) {
                    TunnResult::WriteToNetwork(p) => f(Out::Network(p)),
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Drives boringtun's timers (call every ~100–250 ms). Returns a datagram
    /// to send (keepalive, handshake) if any.
    pub fn update_timers<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        match self.tunn.update_timers(buf) {
            TunnResult::WriteToNetwork(p) => Some(p),
            TunnResult::Err(WireGuardError::ConnectionExpired) => None,
            _ => None,
        }
    }

    /// Starts a new handshake now, even if one is in progress.
    pub fn force_handshake<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        match self.tunn.format_handshake_initiation(buf, true) {
            TunnResult::WriteToNetwork(p) => Some(p),
            _ => None,
        }
    }

    /// Time since the current session was established (`None`: no session).
    pub fn time_since_handshake(&self) -> Option<Duration> {
        self.tunn.time_since_last_handshake()
    }

    /// (tx bytes, rx bytes) of IP payload.
    pub fn bytes(&self) -> (u64, u64) {
        let (_, tx, rx, _, _) = self.tunn.stats();
        (tx as u64, rx as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pair() -> (StaticKeys, StaticKeys) {
        (
            StaticKeys::from_private([1u8; 32]),
            StaticKeys::from_private([2u8; 32]),
        )
    }

    fn ep(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    /// Delivers `dgram` to `to`, collecting what it sends back and what it decrypted.
    fn deliver(to: &mut WgPeer, from: SocketAddr, dgram: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut buf = vec![0u8; BUF_SIZE];
        let (mut net, mut tun) = (Vec::new(), Vec::new());
        let _ = to.decapsulate(from, dgram, &mut buf, |o| match o {
            Out::Network(p) => net.push(p.to_vec()),
            Out::Tunnel(p) => tun.push(p.to_vec()),
        });
        (net, tun)
    }

    fn ip_packet(n: u8) -> Vec<u8> {
        // minimal valid IPv4 header + 4 bytes payload
        let mut p = vec![0u8; 24];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&24u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20] = n;
        p
    }

    #[test]
    fn handshake_and_data_and_demux() {
        let (a_keys, b_keys) = pair();
        let mut a = WgPeer::new(&a_keys, b_keys.public.to_bytes(), 7, None, Some(ep(2)));
        let mut b = WgPeer::new(&b_keys, a_keys.public.to_bytes(), 42, None, None);
        let ident_b = Identifier::new(b_keys.clone());
        let mut buf = vec![0u8; BUF_SIZE];

        // a has no session: the packet is queued and an initiation goes out
        let init = a
            .encapsulate(&ip_packet(1), &mut buf)
            .unwrap()
            .unwrap()
            .to_vec();
        assert_eq!(
            ident_b.identify(&init),
            Some(Demux::Initiation(a_keys.public.to_bytes()))
        );
        let (resp, _) = deliver(&mut b, ep(1), &init);
        assert_eq!(resp.len(), 1);
        assert_eq!(b.endpoint(), Some(ep(1)));
        // the response comes back; a flushes its queued packet
        // (a keepalive confirming the session, then the queued packet)
        let (queued, _) = deliver(&mut a, ep(2), &resp[0]);
        assert_eq!(queued.len(), 2);
        let mut got = Vec::new();
        for q in &queued {
            assert_eq!(ident_b.identify(q), Some(Demux::Index(42)));
            got.extend(deliver(&mut b, ep(1), q).1);
        }
        assert_eq!(got, vec![ip_packet(1)]);
        assert!(a.time_since_handshake().is_some());

        // roaming: b answers to where a's packets now come from
        let d = a
            .encapsulate(&ip_packet(2), &mut buf)
            .unwrap()
            .unwrap()
            .to_vec();
        let (_, tun) = deliver(&mut b, ep(9), &d);
        assert_eq!(tun, vec![ip_packet(2)]);
        assert_eq!(b.endpoint(), Some(ep(9)));

        // garbage is not identified and not answered
        assert_eq!(ident_b.identify(b"hello world"), None);
        let mut junk = d.clone();
        junk[20] ^= 0xff;
        let (net, tun) = deliver(&mut b, ep(9), &junk);
        assert!(net.is_empty() && tun.is_empty());
        // an initiation from an unknown key is not identified
        let stranger = StaticKeys::from_private([3u8; 32]);
        let mut c = WgPeer::new(&stranger, [9u8; 32], 1, None, None);
        let init = c.force_handshake(&mut buf).unwrap().to_vec();
        assert_eq!(ident_b.identify(&init), None);
    }
}
