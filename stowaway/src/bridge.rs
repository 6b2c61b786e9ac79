//! Stowaway's side of bridges: route listeners that accept only the bridged
//! Pods' IPs and carry each connection through the tunnel to the local
//! container, and the control links that push port maps to carriers.
//!
//! For every bridge:
//! - one route listener per port on `0.0.0.0:<route_port>`: a connection from
//!   one of the bridge's Pod IPs is relayed (both ways, half-close kept) to
//!   `dialer.dial(<local_ip>:<local port>)`; any other source is closed at once
//!   and logged;
//! - one control link per bridged Pod, dialed to `<pod ip>:<control port>`: it
//!   sends `Configure` with the port map (`port` = the container port,
//!   `forward` = `<pod_ip>:<route_port>`), waits for `Configured`, pings when
//!   idle, sends changes live, and re-dials with backoff when the link drops
//!   (a restarted carrier).
//!
//! The control port is [`proto::CARRIER_CONTROL_PORT`] unless the environment
//! variable [`proto::ENV_CARRIER_CONTROL_PORT`] says otherwise ([`run`]), or
//! given explicitly ([`run_with`]). The module depends only on `proto`, tokio,
//! tracing and serde_json.

use proto::carrier::{
    CarrierReply, PortForward, StowawayMessage, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
};
use proto::cluster::{BridgeSpec, BridgedPod};
use proto::status::{BridgeStatus, CarrierStatus};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A byte stream through the tunnel (or, in tests, any stream).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}
pub type BoxStream = Box<dyn Stream>;
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;
/// Resolves once the routed connection is served; `Err` when `dst` is unreachable.
pub type RouteFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Opens a TCP connection to `dst` (a local container's address on a client's
/// Docker network) through the tunnel of the peer that routes it.
pub trait Dial: Send + Sync + 'static {
    fn dial(&self, dst: SocketAddrV4) -> DialFuture;

    /// Serves `client` (a routed connection from a carrier) with a connection
    /// to `dst`. By default: dial, then copy both ways in this task. The tunnel
    /// dialer instead hands the socket to the peer's owner (no copy, no task in
    /// between).
    fn route(&self, dst: SocketAddrV4, client: TcpStream) -> RouteFuture {
        let dial = self.dial(dst);
        Box::pin(async move {
            let mut up = dial.await?;
            let mut client = client;
            match tokio::io::copy_bidirectional(&mut client, &mut up).await {
                Ok((a, b)) => tracing::debug!(to_local = a, from_local = b, "closed"),
                Err(e) => tracing::debug!(error = %e, "closed with error"),
            }
            Ok(())
        })
    }
}

/// Tunables of the bridge machinery; [`Options::default`] is what stowaway uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Port carriers listen on for control links.
    pub control_port: u16,
    /// Address route listeners bind (their port is the bridge's route port).
    pub route_bind: Ipv4Addr,
    /// A ping is sent after this long without traffic on a control link.
    pub ping_interval: Duration,
    /// How long carrier may take to answer a message.
    pub reply_timeout: Duration,
    /// Longest wait between two dials of a carrier.
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            control_port: proto::CARRIER_CONTROL_PORT,
            route_bind: Ipv4Addr::UNSPECIFIED,
            ping_interval: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(3),
        }
    }
}

/// Runs until `shutdown` resolves: applies every change of `bridges` live and
/// publishes the per-bridge state on `status_tx`. `pod_ip` is where carriers
/// reach the route ports. The control port comes from
/// `GEFYRA_CARRIER_CONTROL_PORT` when set (tests), else the fixed one.
pub async fn run<D: Dial + Clone>(
    bridges: watch::Receiver<Vec<BridgeSpec>>,
    pod_ip: Ipv4Addr,
    dialer: D,
    status_tx: watch::Sender<Vec<BridgeStatus>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut opts = Options::default();
    if let Ok(v) = std::env::var(proto::ENV_CARRIER_CONTROL_PORT) {
        match v.parse::<u16>() {
            Ok(p) if p != 0 => opts.control_port = p,
            _ => {
                tracing::warn!(value = %v, "ignoring {}: not a port", proto::ENV_CARRIER_CONTROL_PORT)
            }
        }
    }
    run_with(bridges, pod_ip, dialer, status_tx, shutdown, opts).await
}

/// [`run`] with explicit [`Options`].
pub async fn run_with<D: Dial + Clone>(
    mut bridges: watch::Receiver<Vec<BridgeSpec>>,
    pod_ip: Ipv4Addr,
    dialer: D,
    status_tx: watch::Sender<Vec<BridgeStatus>>,
    shutdown: impl Future<Output = ()> + Send,
    opts: Options,
) {
    tokio::pin!(shutdown);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(256);
    let ctx = Ctx {
        pod_ip,
        dialer,
        ev_tx,
        opts: Arc::new(opts),
    };
    let mut rts: BTreeMap<String, BridgeRt> = BTreeMap::new();
    let mut watching = true;
    let specs = bridges.borrow_and_update().clone();
    reconcile(&mut rts, &specs, &ctx);
    publish(&rts, &status_tx);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = bridges.changed(), if watching => {
                if r.is_err() {
                    // The source is gone: keep serving what we have.
                    watching = false;
                    continue;
                }
                let specs = bridges.borrow_and_update().clone();
                reconcile(&mut rts, &specs, &ctx);
                publish(&rts, &status_tx);
            }
            Some(ev) = ev_rx.recv() => {
                if apply_event(&mut rts, ev) {
                    publish(&rts, &status_tx);
                }
            }
        }
    }
    // Dropping the runtimes aborts every listener and link.
    drop(rts);
}

struct Ctx<D> {
    pod_ip: Ipv4Addr,
    dialer: D,
    ev_tx: mpsc::Sender<Event>,
    opts: Arc<Options>,
}

enum Event {
    Carrier {
        bridge: String,
        pod: String,
        ip: Ipv4Addr,
        configured: bool,
        error: Option<String>,
    },
    Route {
        bridge: String,
        route_port: u16,
        open: bool,
    },
}

/// One bridge's live state; dropping it aborts its tasks.
struct BridgeRt {
    spec: BridgeSpec,
    allowed_tx: watch::Sender<Arc<HashSet<Ipv4Addr>>>,
    ports_tx: watch::Sender<Vec<PortForward>>,
    routes: HashMap<u16, RouteRt>,
    carriers: HashMap<(String, Ipv4Addr), CarrierRt>,
}

struct RouteRt {
    target_tx: watch::Sender<SocketAddrV4>,
    open: bool,
    task: JoinHandle<()>,
}

struct CarrierRt {
    configured: bool,
    error: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for BridgeRt {
    fn drop(&mut self) {
        for r in self.routes.values() {
            r.task.abort();
        }
        for c in self.carriers.values() {
            c.task.abort();
        }
    }
}

fn port_map(spec: &BridgeSpec, pod_ip: Ipv4Addr) -> Vec<PortForward> {
    spec.ports
        .iter()
        .map(|p| PortForward {
            port: p.remote,
            forward: SocketAddr::V4(SocketAddrV4::new(pod_ip, p.route_port)),
            http_probe: spec.http_probe_ports.contains(&p.remote),
        })
        .collect()
}

fn reconcile<D: Dial + Clone>(
    rts: &mut BTreeMap<String, BridgeRt>,
    specs: &[BridgeSpec],
    ctx: &Ctx<D>,
) {
    let wanted: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    rts.retain(|name, _| {
        let keep = wanted.contains(name.as_str());
        if !keep {
            tracing::info!(bridge = %name, "bridge removed: closing its routes and control links");
        }
        keep
    });
    for spec in specs {
        match rts.get_mut(&spec.name) {
            Some(rt) if rt.spec == *spec => {}
            Some(rt) => {
                tracing::info!(bridge = %spec.name, "bridge changed");
                update(rt, spec, ctx);
            }
            None => {
                tracing::info!(bridge = %spec.name, pods = spec.pods.len(), ports = spec.ports.len(), "bridge added");
                let (allowed_tx, _) = watch::channel(Arc::new(HashSet::new()));
                let (ports_tx, _) = watch::channel(Vec::new());
                let mut rt = BridgeRt {
                    spec: spec.clone(),
                    allowed_tx,
                    ports_tx,
                    routes: HashMap::new(),
                    carriers: HashMap::new(),
                };
                update(&mut rt, spec, ctx);
                rts.insert(spec.name.clone(), rt);
            }
        }
    }
}

fn update<D: Dial + Clone>(rt: &mut BridgeRt, spec: &BridgeSpec, ctx: &Ctx<D>) {
    rt.spec = spec.clone();
    let allowed: HashSet<Ipv4Addr> = spec.pods.iter().map(|p| p.ip).collect();
    rt.allowed_tx.send_if_modified(|a| {
        let changed = **a != allowed;
        if changed {
            *a = Arc::new(allowed.clone());
        }
        changed
    });
    let map = port_map(spec, ctx.pod_ip);
    rt.ports_tx.send_if_modified(|m| {
        let changed = *m != map;
        if changed {
            *m = map.clone();
        }
        changed
    });

    // Route listeners, keyed by route port.
    let wanted: HashMap<u16, SocketAddrV4> = spec
        .ports
        .iter()
        .map(|p| (p.route_port, SocketAddrV4::new(spec.local_ip, p.local)))
        .collect();
    rt.routes.retain(|port, r| {
        let keep = wanted.contains_key(port);
        if !keep {
            r.task.abort();
        }
        keep
    });
    for (&route_port, &target) in &wanted {
        if let Some(r) = rt.routes.get(&route_port) {
            r.target_tx.send_if_modified(|t| {
                let changed = *t != target;
                *t = target;
                changed
            });
            continue;
        }
        let (target_tx, target_rx) = watch::channel(target);
        let span = tracing::info_span!("route", bridge = %spec.name, route_port);
        let task = tokio::spawn(
            route_listener(
                spec.name.clone(),
                SocketAddrV4::new(ctx.opts.route_bind, route_port),
                target_rx,
                rt.allowed_tx.subscribe(),
                ctx.dialer.clone(),
                ctx.ev_tx.clone(),
            )
            .instrument(span),
        );
        rt.routes.insert(
            route_port,
            RouteRt {
                target_tx,
                open: false,
                task,
            },
        );
    }

    // Control links, keyed by (pod name, pod ip).
    let pods: HashMap<(String, Ipv4Addr), &BridgedPod> = spec
        .pods
        .iter()
        .map(|p| ((p.name.clone(), p.ip), p))
        .collect();
    rt.carriers.retain(|key, c| {
        let keep = pods.contains_key(key);
        if !keep {
            c.task.abort();
        }
        keep
    });
    for (key, pod) in pods {
        if rt.carriers.contains_key(&key) {
            continue;
        }
        let span =
            tracing::info_span!("carrier", bridge = %spec.name, pod = %pod.name, ip = %pod.ip);
        let task = tokio::spawn(
            carrier_link(
                spec.name.clone(),
                pod.clone(),
                rt.ports_tx.subscribe(),
                ctx.ev_tx.clone(),
                ctx.opts.clone(),
            )
            .instrument(span),
        );
        rt.carriers.insert(
            key,
            CarrierRt {
                configured: false,
                error: None,
                task,
            },
        );
    }
}

fn apply_event(rts: &mut BTreeMap<String, BridgeRt>, ev: Event) -> bool {
    match ev {
        Event::Carrier {
            bridge,
            pod,
            ip,
            configured,
            error,
        } => {
            let Some(c) = rts
                .get_mut(&bridge)
                .and_then(|rt| rt.carriers.get_mut(&(pod, ip)))
            else {
                return false;
            };
            c.configured = configured;
            c.error = error;
            true
        }
        Event::Route {
            bridge,
            route_port,
            open,
        } => {
            let Some(r) = rts
                .get_mut(&bridge)
                .and_then(|rt| rt.routes.get_mut(&route_port))
            else {
                return false;
            };
            r.open = open;
            true
        }
    }
}

fn status_of(rts: &BTreeMap<String, BridgeRt>) -> Vec<BridgeStatus> {
    rts.values()
        .map(|rt| BridgeStatus {
            name: rt.spec.name.clone(),
            carriers: rt
                .spec
                .pods
                .iter()
                .map(|p| {
                    let c = rt.carriers.get(&(p.name.clone(), p.ip));
                    CarrierStatus {
                        pod: p.name.clone(),
                        ip: Some(p.ip),
                        configured: c.is_some_and(|c| c.configured),
                        error: c.and_then(|c| c.error.clone()),
                    }
                })
                .collect(),
            route_ports: rt.spec.ports.iter().map(|p| p.route_port).collect(),
            routes_open: rt.routes.values().all(|r| r.open),
            // Known to the tunnel, not here: `Shared::status` fills it in.
            peer_connected: false,
            local_ip: Some(rt.spec.local_ip),
        })
        .collect()
}

fn publish(rts: &BTreeMap<String, BridgeRt>, status_tx: &watch::Sender<Vec<BridgeStatus>>) {
    let status = status_of(rts);
    status_tx.send_if_modified(|s| {
        let changed = *s != status;
        if changed {
            *s = status;
        }
        changed
    });
}

// ------------------------------------------------------------------ routes

async fn route_listener<D: Dial>(
    bridge: String,
    addr: SocketAddrV4,
    target_rx: watch::Receiver<SocketAddrV4>,
    allowed_rx: watch::Receiver<Arc<HashSet<Ipv4Addr>>>,
    dialer: D,
    ev_tx: mpsc::Sender<Event>,
) {
    let route_port = addr.port();
    let mut warned = false;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                if !warned {
                    tracing::error!(%addr, error = %e, "cannot open the route listener; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(%addr, "route open");
    let _ = ev_tx
        .send(Event::Route {
            bridge: bridge.clone(),
            route_port,
            open: true,
        })
        .await;
    let dialer = Arc::new(dialer);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "route accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let from_bridged_pod = match peer.ip() {
            IpAddr::V4(ip) => allowed_rx.borrow().contains(&ip),
            IpAddr::V6(ip) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| allowed_rx.borrow().contains(&ip)),
        };
        if !from_bridged_pod {
            tracing::warn!(source = %peer, "refused a route connection: the source is not a bridged Pod");
            // Reset rather than FIN: nothing was ever served on it.
            let _ = sock.set_zero_linger();
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        let dst = *target_rx.borrow();
        let dialer = dialer.clone();
        let span = tracing::debug_span!("routed", source = %peer, local = %dst);
        tokio::spawn(
            async move {
                if let Err(e) = dialer.route(dst, sock).await {
                    tracing::warn!(local = %dst, error = %e, "cannot reach the local container; closing the routed connection")
                }
            }
            .instrument(span),
        );
    }
}

// ------------------------------------------------------------------ control links

async fn carrier_link(
    bridge: String,
    pod: BridgedPod,
    mut ports_rx: watch::Receiver<Vec<PortForward>>,
    ev_tx: mpsc::Sender<Event>,
    opts: Arc<Options>,
) {
    let addr = SocketAddrV4::new(pod.ip, opts.control_port);
    let min_backoff = Duration::from_millis(200);
    let mut backoff = min_backoff;
    let mut last_reason = String::new();
    loop {
        let mut link = Link {
            bridge: &bridge,
            pod: &pod,
            ev_tx: &ev_tx,
            opts: &opts,
            was_configured: false,
        };
        let reason = link.serve(addr, &mut ports_rx).await;
        if link.was_configured {
            backoff = min_backoff;
        }
        if ports_rx.has_changed().is_err() {
            return; // the bridge is gone
        }
        // Log a failure once per change of reason, not once per retry.
        if reason != last_reason {
            tracing::warn!(%reason, "control link down; re-dialing");
            last_reason = reason.clone();
        }
        let _ = ev_tx
            .send(Event::Carrier {
                bridge: bridge.clone(),
                pod: pod.name.clone(),
                ip: pod.ip,
                configured: false,
                error: Some(reason),
            })
            .await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

struct Link<'a> {
    bridge: &'a str,
    pod: &'a BridgedPod,
    ev_tx: &'a mpsc::Sender<Event>,
    opts: &'a Options,
    was_configured: bool,
}

impl Link<'_> {
    /// One control connection; returns why it ended.
    async fn serve(
        &mut self,
        addr: SocketAddrV4,
        ports_rx: &mut watch::Receiver<Vec<PortForward>>,
    ) -> String {
        let sock =
            match tokio::time::timeout(self.opts.reply_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return format!("cannot reach carrier at {addr}: {e}"),
                Err(_) => return format!("cannot reach carrier at {addr}: timed out"),
            };
        let _ = sock.set_nodelay(true);
        tracing::info!(%addr, "control link open");
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        let mut buf = Vec::with_capacity(1024);

        let mut ports = ports_rx.borrow_and_update().clone();
        if let Err(reason) = self.configure(&mut w, &mut r, &mut buf, &ports).await {
            return reason;
        }
        loop {
            tokio::select! {
                changed = ports_rx.changed() => {
                    if changed.is_err() {
                        return "bridge removed".into();
                    }
                    ports = ports_rx.borrow_and_update().clone();
                    if let Err(reason) = self.configure(&mut w, &mut r, &mut buf, &ports).await {
                        return reason;
                    }
                }
                _ = tokio::time::sleep(self.opts.ping_interval) => {
                    let ping = StowawayMessage::Ping { version: PROTOCOL_VERSION };
                    match self.request(&mut w, &mut r, &mut buf, &ping).await {
                        Ok(CarrierReply::Pong { .. }) => {}
                        Ok(other) => return format!("carrier answered a ping with {other:?}"),
                        Err(reason) => return reason,
                    }
                }
                line = read_line(&mut r, &mut buf) => {
                    match line {
                        Ok(true) => {
                            // Carrier only speaks when asked; an unsolicited line is a
                            // protocol error on its side, but harmless.
                            tracing::debug!(line = %String::from_utf8_lossy(&buf).trim_end(), "unexpected message from carrier");
                            buf.clear();
                        }
                        Ok(false) => return "carrier closed the control link".into(),
                        Err(e) => return format!("control link failed: {e}"),
                    }
                }
            }
        }
    }

    async fn configure(
        &mut self,
        w: &mut OwnedWriteHalf,
        r: &mut BufReader<OwnedReadHalf>,
        buf: &mut Vec<u8>,
        ports: &[PortForward],
    ) -> Result<(), String> {
        let msg = StowawayMessage::Configure {
            version: PROTOCOL_VERSION,
            bridge: self.bridge.to_string(),
            ports: ports.to_vec(),
        };
        let (configured, error) = match self.request(w, r, buf, &msg).await? {
            CarrierReply::Configured { listening, .. } => {
                tracing::info!(?listening, "carrier configured");
                self.was_configured = true;
                (true, None)
            }
            CarrierReply::Error { reason, .. } => {
                // The link stays: carrier serves what it could bind, and the
                // next change of the map is sent again.
                tracing::warn!(%reason, "carrier refused the port map");
                (false, Some(reason))
            }
            other => return Err(format!("carrier answered a port map with {other:?}")),
        };
        let _ = self
            .ev_tx
            .send(Event::Carrier {
                bridge: self.bridge.to_string(),
                pod: self.pod.name.clone(),
                ip: self.pod.ip,
                configured,
                error,
            })
            .await;
        Ok(())
    }

    async fn request(
        &mut self,
        w: &mut OwnedWriteHalf,
        r: &mut BufReader<OwnedReadHalf>,
        buf: &mut Vec<u8>,
        msg: &StowawayMessage,
    ) -> Result<CarrierReply, String> {
        let mut bytes = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        w.write_all(&bytes)
            .await
            .map_err(|e| format!("control link failed: {e}"))?;
        let got = tokio::time::timeout(self.opts.reply_timeout, read_line(r, buf))
            .await
            .map_err(|_| "carrier did not answer in time".to_string())?
            .map_err(|e| format!("control link failed: {e}"))?;
        if !got {
            return Err("carrier closed the control link".into());
        }
        let reply = serde_json::from_slice::<CarrierReply>(buf.trim_ascii())
            .map_err(|e| format!("carrier sent a reply that does not parse: {e}"));
        buf.clear();
        reply
    }
}

/// Reads one line into `buf` (kept across cancellation: call again with the
/// same buffer). Ok(false) on EOF.
async fn read_line(r: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        if buf.last() == Some(&b'\n') {
            return Ok(true);
        }
        let room = (MAX_MESSAGE_LEN + 1).saturating_sub(buf.len()) as u64;
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
        let n = (&mut *r).take(room).read_until(b'\n', buf).await?;
        if n == 0 {
            return Ok(false);
        }
    }
}
