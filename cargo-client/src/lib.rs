//! cargo-client: the WireGuard client in the developer's Docker network. It
//! reads IP packets from a TUN device, encrypts them to stowaway, and writes
//! what comes back to the TUN; the kernel forwards for the dev containers
//! that use this container as their gateway.
//!
//! One owner task holds the WireGuard session (no lock on the data path).
//! Liveness: when nothing came back for a while, it pings stowaway's tunnel
//! address through the tunnel; an unanswered probe starts a new handshake
//! every [`HANDSHAKE_RETRY`] until one completes (so a restarted stowaway is
//! found again within seconds, not after boringtun's 15 s and more).

use proto::config::CargoConfig;
use proto::status::CargoStatus;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tunnel::{packet, wg, Out, StaticKeys, WgPeer};

pub mod net;
pub use udpio;

/// Time between forced handshakes while stowaway does not answer.
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(2500);
/// A probe unanswered for this long means stowaway lost our session.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Data sent and nothing received for this long: probe.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(2);
/// How often the status file is written.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// A status file older than this means the daemon is not running.
pub const STATUS_MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {0:?}: expected IPv4:port or name:port")]
    Endpoint(String),
    #[error("endpoint {0}: cannot resolve: {1}")]
    Resolve(String, String),
    #[error("TUN device {name}: {source}")]
    Tun {
        name: String,
        source: std::io::Error,
    },
    #[error("routes: {0}")]
    Routes(String),
    #[error("udp: {0}")]
    Udp(std::io::Error),
    #[error("status file {path}: {source}")]
    Status {
        path: String,
        source: std::io::Error,
    },
    #[error("status file {path}: {msg}")]
    StatusParse { path: String, msg: String },
}

/// Runtime options beyond the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the status file is written.
    pub status_file: PathBuf,
    /// Add the routes into the TUN (off: the caller routes).
    pub routes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            status_file: PathBuf::from(proto::CARGO_STATUS_FILE),
            routes: true,
        }
    }
}

/// Checks the endpoint's form: `IPv4:port` or `name:port`.
pub fn parse_endpoint(s: &str) -> Result<(String, u16), Error> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddrV4>() {
        return Ok((a.ip().to_string(), a.port()));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| Error::Endpoint(s.to_string()))?;
    let port: u16 = port.parse().map_err(|_| Error::Endpoint(s.to_string()))?;
    if host.is_empty() || port == 0 || host.contains(':') {
        return Err(Error::Endpoint(s.to_string()));
    }
    Ok((host.to_string(), port))
}

/// Resolves the endpoint to an IPv4 socket address (names with
/// hickory-resolver from /etc/resolv.conf: the binary is static, no NSS).
pub async fn resolve_endpoint(s: &str) -> Result<SocketAddrV4, Error> {
    let (host, port) = parse_endpoint(s)?;
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(ip, port));
    }
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| Error::Resolve(host.clone(), e.to_string()))?;
    let lookup = resolver
        .lookup_ip(host.as_str())
        .await
        .map_err(|e| Error::Resolve(host.clone(), e.to_string()))?;
    let ip = lookup
        .iter()
        .find_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .ok_or_else(|| Error::Resolve(host.clone(), "no IPv4 address".into()))?;
    Ok(SocketAddrV4::new(ip, port))
}

/// Reads a JSON or YAML config file.
pub fn load_config(path: &Path) -> Result<CargoConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let r = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_str(&text).map_err(|e| e.to_string())
    };
    r.map_err(|e| format!("invalid config {}: {e}", path.display()))
}

/// Creates the TUN device, routes, then runs the tunnel until `shutdown`.
pub async fn run(
    cfg: CargoConfig,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let endpoint = resolve_endpoint(&cfg.endpoint).await?;
    let tun =
        net::create_tun(&cfg.tun_name, cfg.tunnel_ip, cfg.mtu).map_err(|source| Error::Tun {
            name: cfg.tun_name.clone(),
            source,
        })?;
    net::enable_forwarding();
    if opts.routes {
        net::add_routes(&cfg.tun_name, *endpoint.ip())
            .await
            .map_err(Error::Routes)?;
    }
    let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
        .await
        .map_err(Error::Udp)?;
    udp.connect(SocketAddr::V4(endpoint))
        .await
        .map_err(Error::Udp)?;
    let udp_state = udpio::state(&udp, 8 << 20).map_err(Error::Udp)?;
    tracing::info!(endpoint = %endpoint, tun = %cfg.tun_name, tunnel_ip = %cfg.tunnel_ip, mtu = cfg.mtu, "cargo-client running");
    run_tunnel(cfg, endpoint, Arc::new(tun), udp, udp_state, opts, shutdown).await
}

struct Liveness {
    last_rx: Option<Instant>,
    last_data_tx: Option<Instant>,
    probe_sent: Option<Instant>,
    last_forced: Option<Instant>,
    seq: u16,
    rx_errors: u64,
    tun_errors: u64,
}

/// The data path: one owner of the WireGuard session.
async fn run_tunnel(
    cfg: CargoConfig,
    endpoint: SocketAddrV4,
    tun: Arc<tun_rs::AsyncDevice>,
    udp: UdpSocket,
    udp_state: quinn_udp::UdpSocketState,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let keys = StaticKeys::from_private(cfg.private_key.0);
    let mut peer = WgPeer::new(
        &keys,
        cfg.peer_public_key.0,
        1,
        None,
        Some(SocketAddr::V4(endpoint)),
    );
    let max_mss = packet::mss_for_mtu(cfg.mtu);
    let keepalive = Duration::from_secs(u64::from(cfg.keepalive_secs.max(1)));
    let mut rbufs = udpio::RecvBufs::default();
    let mut tx_batch = tunnel::DatagramBatch::new(256 * 1024);
    let mut net_batch = tunnel::DatagramBatch::new(64 * 1024);
    // TUN offloads (virtio-net header): reads may be TSO trains split here,
    // writes are GRO-coalesced so one write carries many TCP segments
    let mut to_tun = PacketQueue::default();
    let mut gro = tun_rs::GROTable::default();
    let mut tun_orig = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65535];
    let seg_cap = usize::from(cfg.mtu).max(1500) + 64;
    let mut tun_bufs = vec![vec![0u8; seg_cap]; tun_rs::IDEAL_BATCH_SIZE];
    let mut tun_sizes = vec![0usize; tun_rs::IDEAL_BATCH_SIZE];
    let ep = SocketAddr::V4(endpoint);
    let mut out_buf = vec![0u8; wg::BUF_SIZE];
    let mut live = Liveness {
        last_rx: None,
        last_data_tx: None,
        probe_sent: None,
        last_forced: None,
        seq: 0,
        rx_errors: 0,
        tun_errors: 0,
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now() - STATUS_EVERY;
    let probe_id: u16 = 0x6766; // "gf"
    let stowaway_ip = proto::STOWAWAY_TUNNEL_IP;
    // start the session right away
    if let Some(d) = peer.force_handshake(&mut out_buf) {
        let _ = udp.send(d).await;
    }
    live.last_forced = Some(Instant::now());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = udp.readable() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "udp readable");
                    continue;
                }
                // a few batched receives (recvmmsg + GRO), then the other branches
                for _ in 0..4 {
                    let got = rbufs.try_recv(&udp, &udp_state, |_, d| {
                        let ok = peer.decapsulate(ep, d, &mut out_buf, |o| match o {
                            Out::Network(p) => {
                                let _ = net_batch.push(p);
                            }
                            Out::Tunnel(p) => {
                                if !is_probe_reply(p, cfg.tunnel_ip, stowaway_ip, probe_id) {
                                    packet::clamp_mss(to_tun.push(p), max_mss);
                                }
                            }
                        });
                        match ok {
                            Ok(()) => live.last_rx = Some(Instant::now()),
                            Err(e) => {
                                live.rx_errors += 1;
                                tracing::debug!(error = %e, "datagram rejected");
                            }
                        }
                    });
                    if to_tun.n > 0 {
                        if let Err(e) = tun.send_multiple(&mut gro, to_tun.filled(), tun_rs::VIRTIO_NET_HDR_LEN).await {
                            live.tun_errors += 1;
                            if live.tun_errors < 5 {
                                tracing::warn!(error = %e, "TUN write failed");
                            }
                        }
                    }
                    to_tun.clear();
                    if !net_batch.is_empty() {
                        let _ = udpio::send_batch(&udp, &udp_state, ep, &net_batch).await;
                        net_batch.clear();
                    }
                    match got {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "udp recv");
                            break;
                        }
                    }
                }
            }
            r = tun.recv_multiple(&mut tun_orig, &mut tun_bufs, &mut tun_sizes, 0) => {
                let mut r = r;
                // one TSO train (or packet) per read; a few reads per wake-up
                for round in 0..16 {
                    let n = match r {
                        Ok(n) => n,
                        Err(e) => {
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                tracing::debug!(error = %e, "TUN read");
                            }
                            break;
                        }
                    };
                    for (b, &len) in tun_bufs.iter_mut().zip(tun_sizes.iter()).take(n) {
                        let p = &mut b[..len];
                        if packet::ipv4(p).is_none() {
                            continue;
                        }
                        packet::clamp_mss(p, max_mss);
                        let need = (len + wg::WG_OVERHEAD + 16).max(148);
                        if tx_batch.space(need).is_none() {
                            let _ = udpio::send_batch(&udp, &udp_state, ep, &tx_batch).await;
                            tx_batch.clear();
                        }
                        if let Some(space) = tx_batch.space(need) {
                            if let Ok(Some(d)) = peer.encapsulate(p, space) {
                                let n = d.len();
                                tx_batch.commit(n);
                            }
                        }
                        live.last_data_tx = Some(Instant::now());
                    }
                    if round == 15 {
                        break;
                    }
                    r = tun.try_recv_multiple(&mut tun_orig, &mut tun_bufs, &mut tun_sizes, 0);
                }
                if !tx_batch.is_empty() {
                    let _ = udpio::send_batch(&udp, &udp_state, ep, &tx_batch).await;
                    tx_batch.clear();
                }
            }
            _ = ticker.tick() => {
                if let Some(d) = peer.update_timers(&mut out_buf) {
                    let _ = udp.send(d).await;
                }
                let now = Instant::now();
                liveness(&mut peer, &mut live, now, keepalive, &cfg, probe_id, &udp, &mut out_buf).await;
                if now.duration_since(last_status) >= STATUS_EVERY {
                    last_status = now;
                    let st = status_of(&peer, &live, &cfg, now, keepalive);
                    if let Err(e) = write_status(&opts.status_file, &st) {
                        tracing::debug!(error = %e, "status file");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Decrypted packets for the TUN, each after [`tun_rs::VIRTIO_NET_HDR_LEN`]
/// bytes of headroom, in buffers reused from batch to batch.
#[derive(Default)]
struct PacketQueue {
    bufs: Vec<Vec<u8>>,
    n: usize,
}

impl PacketQueue {
    /// Copies a packet in; returns it (after the headroom) for in-place edits.
    fn push(&mut self, p: &[u8]) -> &mut [u8] {
        if self.n == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(2048));
        }
        let b = &mut self.bufs[self.n];
        b.clear();
        b.resize(tun_rs::VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(p);
        self.n += 1;
        &mut b[tun_rs::VIRTIO_NET_HDR_LEN..]
    }
    fn filled(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[..self.n]
    }
    fn clear(&mut self) {
        self.n = 0;
    }
}

#[allow(clippy::too_many_arguments)]
async fn liveness(
    peer: &mut WgPeer,
    live: &mut Liveness,
    now: Instant,
    keepalive: Duration,
    cfg: &CargoConfig,
    probe_id: u16,
    udp: &UdpSocket,
    buf: &mut [u8],
) {
    let since_rx = live.last_rx.map(|t| now.duration_since(t));
    let has_session = peer.time_since_handshake().is_some();
    // An unanswered probe, or no session at all: handshake again, quickly.
    let probe_unanswered = match (live.probe_sent, live.last_rx) {
        (Some(p), Some(rx)) => rx < p && now.duration_since(p) >= PROBE_TIMEOUT,
        (Some(p), None) => now.duration_since(p) >= PROBE_TIMEOUT,
        _ => false,
    };
    if (!has_session || probe_unanswered)
        && live
            .last_forced
            .is_none_or(|t| now.duration_since(t) >= HANDSHAKE_RETRY)
    {
        live.last_forced = Some(now);
        if has_session {
            tracing::info!("stowaway does not answer: new handshake");
        }
        if let Some(d) = peer.force_handshake(buf) {
            let _ = udp.send(d).await;
        }
        return;
    }
    if !has_session {
        return;
    }
    // Probe when idle for a keepalive interval, or when data went out and nothing came back.
    let sent_unanswered = match (live.last_data_tx, live.last_rx) {
        (Some(tx), Some(rx)) => tx > rx && now.duration_since(rx) >= SUSPECT_AFTER,
        (Some(_), None) => true,
        _ => false,
    };
    let idle = since_rx.is_none_or(|d| d >= keepalive);
    let probe_pending = match (live.probe_sent, live.last_rx) {
        (Some(p), Some(rx)) => rx < p,
        (Some(_), None) => true,
        _ => false,
    };
    if (idle || sent_unanswered) && !probe_pending {
        live.seq = live.seq.wrapping_add(1);
        let probe = echo_request(cfg.tunnel_ip, proto::STOWAWAY_TUNNEL_IP, probe_id, live.seq);
        if let Ok(Some(d)) = peer.encapsulate(&probe, buf) {
            let _ = udp.send(d).await;
        }
        live.probe_sent = Some(now);
    }
}

fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = packet::PROTO_ICMP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = packet::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    let c = packet::checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn is_probe_reply(p: &[u8], own: Ipv4Addr, stowaway: Ipv4Addr, id: u16) -> bool {
    let Some(ip) = packet::ipv4(p) else {
        return false;
    };
    ip.proto == packet::PROTO_ICMP
        && ip.src == stowaway
        && ip.dst == own
        && p.len() >= ip.ihl + 8
        && p[ip.ihl] == 0
        && p[ip.ihl + 4..ip.ihl + 6] == id.to_be_bytes()
}

fn status_of(
    peer: &WgPeer,
    live: &Liveness,
    cfg: &CargoConfig,
    now: Instant,
    keepalive: Duration,
) -> CargoStatus {
    let hs = peer.time_since_handshake();
    let rx_recent = live
        .last_rx
        .is_some_and(|t| now.duration_since(t) < keepalive * 3 + Duration::from_secs(5));
    let (tx, rx) = peer.bytes();
    CargoStatus {
        version: proto::VERSION.to_string(),
        endpoint: cfg.endpoint.clone(),
        tunnel_ip: Some(cfg.tunnel_ip),
        last_handshake_secs: hs.map(|d| d.as_secs()),
        fresh: hs.is_some_and(|d| d.as_secs() < proto::HANDSHAKE_FRESH_SECS) && rx_recent,
        rx_bytes: rx,
        tx_bytes: tx,
        rx_errors: live.rx_errors,
    }
}

/// Writes the status file atomically (temp file + rename).
pub fn write_status(path: &Path, st: &CargoStatus) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(st).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// Reads the status file. `Ok((status, fresh))`: fresh when the daemon wrote
/// it recently and the handshake is fresh.
pub fn read_status(path: &Path) -> Result<(CargoStatus, bool), Error> {
    let err = |source| Error::Status {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(err)?;
    let st: CargoStatus = serde_json::from_str(&text).map_err(|e| Error::StatusParse {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::MAX);
    let fresh = st.fresh && age <= STATUS_MAX_AGE;
    Ok((st, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("10.0.0.1:31820").unwrap(),
            ("10.0.0.1".into(), 31820)
        );
        assert_eq!(
            parse_endpoint("node-1:31820").unwrap(),
            ("node-1".into(), 31820)
        );
        assert!(parse_endpoint("node-1").is_err());
        assert!(parse_endpoint("node-1:x").is_err());
        assert!(parse_endpoint(":1").is_err());
    }

    #[test]
    fn probe_reply_is_recognised() {
        let own = Ipv4Addr::new(192, 168, 99, 2);
        let req = echo_request(own, proto::STOWAWAY_TUNNEL_IP, 7, 1);
        let info = packet::ipv4(&req).unwrap();
        let mut rep = Vec::new();
        assert!(packet::icmp_echo_reply(&req, &info, &mut rep));
        assert!(is_probe_reply(&rep, own, proto::STOWAWAY_TUNNEL_IP, 7));
        assert!(!is_probe_reply(&rep, own, proto::STOWAWAY_TUNNEL_IP, 8));
        assert!(!is_probe_reply(&req, own, proto::STOWAWAY_TUNNEL_IP, 7));
    }

    #[test]
    fn status_file_roundtrip_and_staleness() {
        let dir = std::env::temp_dir().join(format!("cargo-status-{}", std::process::id()));
        let path = dir.join("status.json");
        let st = CargoStatus {
            fresh: true,
            ..Default::default()
        };
        write_status(&path, &st).unwrap();
        let (back, fresh) = read_status(&path).unwrap();
        assert_eq!(back, st);
        assert!(fresh);
        let st = CargoStatus::default();
        write_status(&path, &st).unwrap();
        assert!(!read_status(&path).unwrap().1);
        assert!(read_status(&dir.join("missing.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
