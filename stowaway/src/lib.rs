//! stowaway: the in-cluster userspace WireGuard endpoint. It needs no
//! capability: one UDP socket for WireGuard, one TCP listener for health and
//! status, and ordinary sockets for every flow it ends.
//!
//! Shape: [`run`] takes the bound sockets, the live peer and bridge sets
//! (`watch` channels: a file sends them once, the cluster watcher on every
//! change) and a shutdown future. One owner task per peer ([`peer`]); the UDP
//! dispatcher only tells peers apart and hands datagrams over.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod cluster;
pub mod dial;
pub mod flow;
pub mod health;
pub mod peer;
pub use udpio;

use bytes::BytesMut;
use proto::cluster::BridgeSpec;
use proto::config::{PeerConfig, StowawayConfig};
use proto::status::{BridgeStatus, Counters, PeerStatus, StowawayStatus};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tunnel::{Demux, Identifier, StaticKeys};

/// Runtime settings derived from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub private_key: [u8; 32],
    pub tunnel_ip: Ipv4Addr,
    pub mtu: u16,
    pub dns_upstream: SocketAddr,
    pub pod_ip: Ipv4Addr,
    /// smoltcp buffer per direction per TCP flow.
    pub tcp_buffer: usize,
}

impl Settings {
    /// From a config: `dns_upstream` falls back to env GEFYRA_DNS_UPSTREAM, then
    /// the first nameserver of /etc/resolv.conf; `pod_ip` to env GEFYRA_POD_IP, then 127.0.0.1.
    pub fn from_config(cfg: &StowawayConfig) -> Result<Settings, ConfigError> {
        let dns_upstream = match cfg.dns_upstream {
            Some(a) => a,
            None => match std::env::var(proto::ENV_DNS_UPSTREAM) {
                Ok(v) if !v.is_empty() => parse_upstream(&v).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{}: not an IP or IP:port: {v}",
                        proto::ENV_DNS_UPSTREAM
                    ))
                })?,
                _ => resolv_conf_upstream(Path::new("/etc/resolv.conf"))
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 53], 53))),
            },
        };
        let pod_ip = match cfg.pod_ip {
            Some(ip) => ip,
            None => match std::env::var(proto::ENV_POD_IP) {
                Ok(v) if !v.is_empty() => v.trim().parse().map_err(|_| {
                    ConfigError::Invalid(format!("{}: not an IPv4 address: {v}", proto::ENV_POD_IP))
                })?,
                _ => Ipv4Addr::LOCALHOST,
            },
        };
        if cfg.mtu < 576 {
            return Err(ConfigError::Invalid(format!(
                "mtu: {} is below 576",
                cfg.mtu
            )));
        }
        Ok(Settings {
            private_key: cfg.private_key.0,
            tunnel_ip: cfg.tunnel_ip,
            mtu: cfg.mtu,
            dns_upstream,
            pod_ip,
            tcp_buffer: tcp_buffer_from_env(),
        })
    }
}

/// smoltcp buffer per direction per TCP flow: env GEFYRA_TCP_BUFFER (bytes,
/// 64 KiB..16 MiB), default [`DEFAULT_TCP_BUFFER`].
fn tcp_buffer_from_env() -> usize {
    std::env::var("GEFYRA_TCP_BUFFER")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|b| b.clamp(64 * 1024, 16 << 20))
        .unwrap_or(DEFAULT_TCP_BUFFER)
}

/// Default smoltcp buffer per direction per TCP flow.
pub const DEFAULT_TCP_BUFFER: usize = 512 * 1024;

fn parse_upstream(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The first IPv4 `nameserver` of a resolv.conf.
pub fn resolv_conf_upstream(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next()? != "nameserver" {
            return None;
        }
        let ip: Ipv4Addr = w.next()?.parse().ok()?;
        Some(SocketAddr::from((ip, 53)))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Reads a JSON or YAML config file. Errors name the offending field.
pub fn load_config(path: &Path) -> Result<StowawayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_config(&text).map_err(|msg| ConfigError::Parse {
        path: path.display().to_string(),
        msg,
    })
}

/// Parses JSON (if it starts with `{`) or YAML.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Global counters (atomics: written by many tasks, read by the status endpoint).
#[derive(Default)]
pub struct AtomicCounters {
    pub bad_packets: AtomicU64,
    pub dropped_packets: AtomicU64,
    pub tcp_flows_open: AtomicU64,
    pub tcp_flows_total: AtomicU64,
    pub udp_flows_open: AtomicU64,
    pub udp_flows_total: AtomicU64,
    pub dns_queries: AtomicU64,
    pub icmp_echo: AtomicU64,
}

impl AtomicCounters {
    pub fn snapshot(&self) -> Counters {
        Counters {
            bad_packets: self.bad_packets.load(Relaxed),
            dropped_packets: self.dropped_packets.load(Relaxed),
            tcp_flows_open: self.tcp_flows_open.load(Relaxed),
            tcp_flows_total: self.tcp_flows_total.load(Relaxed),
            udp_flows_open: self.udp_flows_open.load(Relaxed),
            udp_flows_total: self.udp_flows_total.load(Relaxed),
            dns_queries: self.dns_queries.load(Relaxed),
            icmp_echo: self.icmp_echo.load(Relaxed),
        }
    }
}

/// State shared by all tasks (never on the per-packet path except atomics).
pub struct Shared {
    pub settings: Settings,
    pub counters: AtomicCounters,
    pub public_key: String,
    /// Peers for the status endpoint.
    pub peers: Mutex<Vec<(PeerConfig, Arc<peer::PeerShared>)>>,
    pub bridges: watch::Receiver<Vec<BridgeStatus>>,
}

impl Shared {
    pub fn status(&self) -> StowawayStatus {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let peers = self
            .peers
            .lock()
            .map(|ps| {
                ps.iter()
                    .map(|(cfg, st)| {
                        let hs = st.last_handshake_ms.load(Relaxed);
                        PeerStatus {
                            name: cfg.name.clone(),
                            public_key: cfg.public_key.to_base64(),
                            tunnel_ip: Some(cfg.tunnel_ip),
                            endpoint: st
                                .endpoint
                                .lock()
                                .ok()
                                .and_then(|e| e.map(|e| e.to_string())),
                            last_handshake_secs: (hs > 0).then(|| now_ms.saturating_sub(hs) / 1000),
                            rx_bytes: st.rx_bytes.load(Relaxed),
                            tx_bytes: st.tx_bytes.load(Relaxed),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut bridges = self.bridges.borrow().clone();
        for b in &mut bridges {
            b.peer_connected = b.local_ip.is_some_and(|ip| {
                self.peers.lock().is_ok_and(|ps| {
                    ps.iter().any(|(cfg, st)| {
                        let hs = st.last_handshake_ms.load(Relaxed);
                        routes_to(cfg, ip) && hs > 0 && now_ms.saturating_sub(hs) < SESSION_LIVE_MS
                    })
                })
            });
        }
        StowawayStatus {
            version: proto::VERSION.to_string(),
            public_key: self.public_key.clone(),
            peers,
            counters: self.counters.snapshot(),
            bridges,
        }
    }
}

/// A session whose last handshake is older than this is dead (WireGuard's
/// REJECT_AFTER_TIME: a live peer re-handshakes every two minutes).
const SESSION_LIVE_MS: u64 = 180_000;

/// Whether traffic to `ip` goes to this peer: its tunnel address or its
/// local Docker network.
fn routes_to(cfg: &PeerConfig, ip: Ipv4Addr) -> bool {
    cfg.tunnel_ip == ip || cfg.subnet.is_some_and(|n| n.contains(&ip))
}

struct PeerEntry {
    cfg: PeerConfig,
    index: u32,
    udp_tx: mpsc::Sender<peer::Datagram>,
    ctl_tx: mpsc::Sender<peer::Ctl>,
    status: Arc<peer::PeerShared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("udp socket: {0}")]
    Udp(std::io::Error),
}

/// Runs stowaway until `shutdown` resolves. `udp` is the bound WireGuard socket,
/// `health` the bound status listener.
pub async fn run(
    settings: Settings,
    udp: UdpSocket,
    health: TcpListener,
    peers_rx: watch::Receiver<Vec<PeerConfig>>,
    bridges_rx: watch::Receiver<Vec<BridgeSpec>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let (routes_tx, _) = watch::channel(Arc::new(Vec::new()));
    run_with_routes(
        settings, udp, health, peers_rx, bridges_rx, routes_tx, shutdown,
    )
    .await
}

/// [`run`], publishing the peers' routes on `routes_tx`: a
/// [`dial::TunnelDialer`] made from `routes_tx.subscribe()` dials through the
/// tunnel (tests use it; `run` hands one to the bridge module).
pub async fn run_with_routes(
    settings: Settings,
    udp: UdpSocket,
    health: TcpListener,
    mut peers_rx: watch::Receiver<Vec<PeerConfig>>,
    bridges_rx: watch::Receiver<Vec<BridgeSpec>>,
    routes_tx: watch::Sender<Arc<Vec<dial::Route>>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let keys = StaticKeys::from_private(settings.private_key);
    let public_key = proto::keys::Key(keys.public.to_bytes()).to_base64();
    let identifier = Identifier::new(keys.clone());
    let udp_state = match udpio::state(&udp, UDP_BUFFER) {
        Ok(st) => Arc::new(st),
        Err(e) => return Err(RunError::Udp(e)),
    };
    let udp = Arc::new(udp);
    let (bridge_status_tx, bridge_status_rx) = watch::channel(Vec::new());
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        counters: AtomicCounters::default(),
        public_key: public_key.clone(),
        peers: Mutex::new(Vec::new()),
        bridges: bridge_status_rx,
    });
    tracing::info!(
        listen = ?udp.local_addr().ok(),
        health = ?health.local_addr().ok(),
        public_key = %public_key,
        tunnel_ip = %settings.tunnel_ip,
        dns_upstream = %settings.dns_upstream,
        "stowaway running"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let health_task = tokio::spawn(health::serve(health, shared.clone(), stop_rx.clone()));
    let dialer = dial::TunnelDialer::new(routes_tx.subscribe());
    let mut bstop = stop_rx.clone();
    let bridge_task = tokio::spawn(bridge::run(
        bridges_rx,
        settings.pod_ip,
        dialer,
        bridge_status_tx,
        async move {
            let _ = bstop.wait_for(|s| *s).await;
        },
    ));

    let mut reg = Registry {
        peers: HashMap::new(),
        by_index: HashMap::new(),
        next_index: 1,
        keys: keys.clone(),
        udp: udp.clone(),
        udp_state: udp_state.clone(),
        shared: shared.clone(),
        routes_tx,
    };
    let initial = peers_rx.borrow_and_update().clone();
    reg.apply(initial);

    tokio::pin!(shutdown);
    // datagrams are copied once from the receive slots into this arena and
    // handed to the peers as `Bytes` (no allocation per datagram)
    let mut arena = BytesMut::with_capacity(1 << 20);
    let mut rbufs = udpio::RecvBufs::default();
    let mut to_peers: Vec<([u8; 32], peer::Datagram)> = Vec::with_capacity(256);
    let mut peers_open = true;
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            ch = peers_rx.changed(), if peers_open => {
                if ch.is_err() {
                    peers_open = false;
                    continue;
                }
                let desired = peers_rx.borrow_and_update().clone();
                reg.apply(desired);
            }
            r = udp.readable() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "udp readable");
                    continue;
                }
                // a few batches, then let the other branches run
                for _ in 0..4 {
                    let got = rbufs.try_recv(&udp, &udp_state, |from, d| {
                        if arena.capacity() < d.len() {
                            arena = BytesMut::with_capacity(1 << 20);
                        }
                        let key = match identifier.identify(d) {
                            Some(Demux::Initiation(k)) => reg.peers.contains_key(&k).then_some(k),
                            Some(Demux::Index(i)) => reg.by_index.get(&i).copied(),
                            None => None,
                        };
                        match key {
                            Some(k) => {
                                arena.extend_from_slice(d);
                                let data = arena.split().freeze();
                                to_peers.push((k, peer::Datagram { from, data }));
                            }
                            None => {
                                shared.counters.bad_packets.fetch_add(1, Relaxed);
                            }
                        }
                    });
                    for (k, d) in to_peers.drain(..) {
                        let sent = match reg.peers.get(&k) {
                            Some(e) => e.udp_tx.send(d).await.is_ok(),
                            None => false,
                        };
                        if !sent {
                            shared.counters.bad_packets.fetch_add(1, Relaxed);
                        }
                    }
                    match got {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // ICMP errors from earlier sends surface here; not fatal
                            tracing::debug!(error = %e, "udp recv");
                            break;
                        }
                    }
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    for (_, e) in reg.peers.drain() {
        e.task.abort();
    }
    let _ = health_task.await;
    bridge_task.abort();
    result
}

struct Registry {
    peers: HashMap<[u8; 32], PeerEntry>,
    by_index: HashMap<u32, [u8; 32]>,
    next_index: u32,
    keys: StaticKeys,
    udp: Arc<UdpSocket>,
    udp_state: Arc<quinn_udp::UdpSocketState>,
    shared: Arc<Shared>,
    routes_tx: watch::Sender<Arc<Vec<dial::Route>>>,
}

impl Registry {
    /// Applies a desired peer set: removes gone or changed peers, starts new
    /// ones; the others are not touched.
    fn apply(&mut self, desired: Vec<PeerConfig>) {
        let want: HashMap<[u8; 32], PeerConfig> =
            desired.into_iter().map(|p| (p.public_key.0, p)).collect();
        let stale: Vec<[u8; 32]> = self
            .peers
            .iter()
            .filter(|(k, e)| want.get(*k) != Some(&e.cfg))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(e) = self.peers.remove(&k) {
                self.by_index.remove(&e.index);
                e.task.abort();
                tracing::info!(peer = %e.cfg.name, tunnel_ip = %e.cfg.tunnel_ip, "peer removed");
            }
        }
        for (k, cfg) in want {
            if self.peers.contains_key(&k) {
                continue;
            }
            // a fresh index each time: sessions of a replaced peer never match
            let mut index = self.next_index;
            while self.by_index.contains_key(&index) || index == 0 {
                index = (index + 1) & tunnel::wg::MAX_PEER_INDEX;
            }
            self.next_index = (index + 1) & tunnel::wg::MAX_PEER_INDEX;
            let (udp_tx, udp_rx) = mpsc::channel(4096);
            let (ctl_tx, ctl_rx) = mpsc::channel(64);
            let status = Arc::new(peer::PeerShared::default());
            let task = tokio::spawn(peer::run(peer::PeerTaskArgs {
                cfg: cfg.clone(),
                index,
                keys: self.keys.clone(),
                udp: self.udp.clone(),
                udp_state: self.udp_state.clone(),
                shared: self.shared.clone(),
                status: status.clone(),
                udp_rx,
                ctl_rx,
            }));
            self.by_index.insert(index, k);
            self.peers.insert(
                k,
                PeerEntry {
                    cfg,
                    index,
                    udp_tx,
                    ctl_tx,
                    status,
                    task,
                },
            );
        }
        let mut routes = Vec::new();
        let mut list = Vec::new();
        for e in self.peers.values() {
            list.push((e.cfg.clone(), e.status.clone()));
            routes.push(dial::Route {
                tunnel_ip: e.cfg.tunnel_ip,
                subnet: e.cfg.subnet,
                ctl_tx: e.ctl_tx.clone(),
            });
        }
        list.sort_by_key(|a| a.0.tunnel_ip);
        self.routes_tx.send_replace(Arc::new(routes));
        if let Ok(mut p) = self.shared.peers.lock() {
            *p = list;
        }
    }
}

/// Socket buffer size of the WireGuard socket (each direction).
pub const UDP_BUFFER: usize = 8 << 20;

/// Binds the sockets of a config.
pub async fn bind(
    settings_listen: SocketAddr,
    health: SocketAddr,
) -> std::io::Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(settings_listen).await?;
    let tcp = TcpListener::bind(health).await?;
    Ok((udp, tcp))
}
