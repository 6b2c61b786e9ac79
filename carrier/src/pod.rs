//! In-Pod mode: carrier stands in for the bridged container.
//!
//! It listens on the control port; stowaway dials it and sends
//! [`StowawayMessage`]s (one JSON document per line), carrier answers each with
//! a [`CarrierReply`]. A `Configure` carries the complete port map: carrier
//! binds each `port` on the bind address and forwards each accepted connection
//! to its `forward` address. A new map is applied live: listeners of ports that
//! stay are kept (a changed `forward` applies to the next connection), removed
//! ports are closed, added ports are bound. One task owns the port map; control
//! links talk to it through a channel.

use crate::probe::{self, Head};
use crate::serve::{self, ConnOptions, Limit};
use proto::carrier::{
    CarrierReply, PortForward, StowawayMessage, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct PodOptions {
    /// Address the container ports are bound on (0.0.0.0 in a Pod).
    pub bind_ip: IpAddr,
    pub max_connections: u32,
    pub grace: Duration,
    pub conn: ConnOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortTarget {
    forward: SocketAddr,
    http_probe: bool,
}

struct PortEntry {
    target_tx: watch::Sender<PortTarget>,
    task: JoinHandle<()>,
}

struct ApplyRequest {
    bridge: String,
    ports: Vec<PortForward>,
    reply: oneshot::Sender<CarrierReply>,
}

/// Serves control links on `control` until `shutdown` resolves; then closes
/// every listener and drains open connections for at most `opts.grace`.
pub async fn run(control: TcpListener, opts: PodOptions, shutdown: impl Future<Output = ()>) {
    let limit = Limit::new(opts.max_connections);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (apply_tx, apply_rx) = mpsc::channel::<ApplyRequest>(16);
    if let Ok(addr) = control.local_addr() {
        tracing::info!(control = %addr, bind = %opts.bind_ip, "in-Pod mode: waiting for stowaway");
    }
    let owner = tokio::spawn(port_owner(
        apply_rx,
        opts.bind_ip,
        limit.clone(),
        stop_rx.clone(),
        Arc::new(opts.conn.clone()),
    ));
    let accept = async {
        loop {
            match control.accept().await {
                Ok((sock, peer)) => {
                    let span = tracing::info_span!("control", stowaway = %peer);
                    tokio::spawn(control_link(sock, apply_tx.clone()).instrument(span));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    tracing::info!("shutdown: closing listeners");
    drop(control);
    let _ = stop_tx.send(true);
    owner.abort();
    let _ = owner.await;
    limit.drain(opts.grace).await;
}

async fn port_owner(
    mut apply_rx: mpsc::Receiver<ApplyRequest>,
    bind_ip: IpAddr,
    limit: Limit,
    stop_rx: watch::Receiver<bool>,
    conn: Arc<ConnOptions>,
) {
    let mut ports: BTreeMap<u16, PortEntry> = BTreeMap::new();
    // Listener tasks end when the map drops (abort on drop below) or on stop.
    struct AbortAll<'a>(&'a mut BTreeMap<u16, PortEntry>);
    impl Drop for AbortAll<'_> {
        fn drop(&mut self) {
            for e in self.0.values() {
                e.task.abort();
            }
        }
    }
    let guard = AbortAll(&mut ports);
    while let Some(req) = apply_rx.recv().await {
        let reply = apply(guard.0, &req, bind_ip, &limit, &stop_rx, &conn);
        let _ = req.reply.send(reply);
    }
}

fn apply(
    ports: &mut BTreeMap<u16, PortEntry>,
    req: &ApplyRequest,
    bind_ip: IpAddr,
    limit: &Limit,
    stop_rx: &watch::Receiver<bool>,
    conn: &Arc<ConnOptions>,
) -> CarrierReply {
    let mut wanted: BTreeMap<u16, PortTarget> = BTreeMap::new();
    for p in &req.ports {
        let t = PortTarget {
            forward: p.forward,
            http_probe: p.http_probe,
        };
        if p.port == 0 || wanted.insert(p.port, t).is_some() {
            return CarrierReply::Error {
                version: PROTOCOL_VERSION,
                reason: format!(
                    "port map of bridge {} is invalid: port {} is 0 or listed twice",
                    req.bridge, p.port
                ),
            };
        }
    }
    // Removed ports: close their listeners (open connections keep running).
    ports.retain(|port, e| {
        let keep = wanted.contains_key(port);
        if !keep {
            e.task.abort();
            tracing::info!(port, "port closed");
        }
        keep
    });
    let mut errors = Vec::new();
    for (port, target) in wanted {
        if let Some(e) = ports.get(&port) {
            e.target_tx.send_if_modified(|t| {
                let changed = *t != target;
                if changed {
                    tracing::info!(port, forward = %target.forward, http_probe = target.http_probe, "port updated");
                    *t = target.clone();
                }
                changed
            });
            continue;
        }
        let addr = SocketAddr::new(bind_ip, port);
        match crate::forward::bind_listener(addr) {
            Ok(listener) => {
                tracing::info!(port, forward = %target.forward, http_probe = target.http_probe, "port open");
                let (target_tx, target_rx) = watch::channel(target);
                let task = tokio::spawn(port_loop(
                    listener,
                    target_rx,
                    limit.clone(),
                    stop_rx.clone(),
                    conn.clone(),
                ));
                ports.insert(port, PortEntry { target_tx, task });
            }
            Err(e) => {
                let reason = bind_reason(port, &e);
                tracing::error!(port, error = %e, "{reason}");
                errors.push(reason);
            }
        }
    }
    if errors.is_empty() {
        CarrierReply::Configured {
            version: PROTOCOL_VERSION,
            listening: ports.keys().copied().collect(),
        }
    } else {
        CarrierReply::Error {
            version: PROTOCOL_VERSION,
            reason: errors.join("; "),
        }
    }
}

/// The reason sent to stowaway when a container port cannot be bound.
fn bind_reason(port: u16, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied && port < 1024 {
        format!(
            "cannot listen on port {port}: permission denied; carrier runs as a non-root user and \
             ports below 1024 need the capability NET_BIND_SERVICE on the container or the Pod \
             sysctl net.ipv4.ip_unprivileged_port_start={port} or lower"
        )
    } else {
        format!("cannot listen on port {port}: {e}")
    }
}

async fn port_loop(
    listener: TcpListener,
    target_rx: watch::Receiver<PortTarget>,
    limit: Limit,
    stop_rx: watch::Receiver<bool>,
    conn: Arc<ConnOptions>,
) {
    serve::accept_loop(listener, limit, stop_rx, move |client, peer| {
        let target = target_rx.borrow().clone();
        let conn = conn.clone();
        pod_connection(client, peer, target, conn)
    })
    .await
}

async fn pod_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    target: PortTarget,
    conn: Arc<ConnOptions>,
) {
    let prefix = if target.http_probe {
        match probe::sniff(&mut client).await {
            Ok(Head::KubeProbe) => {
                if let Err(e) = probe::answer(&mut client).await {
                    tracing::debug!(error = %e, "probe answer failed");
                }
                tracing::debug!("answered a kube-probe");
                return;
            }
            Ok(Head::Forward(bytes)) => bytes,
            Err(e) => {
                tracing::debug!(error = %e, "client failed before sending a request");
                return;
            }
        }
    } else {
        Vec::new()
    };
    match serve::connect(&[target.forward], &conn).await {
        Ok(up) => serve::relay_logged(client, up, &prefix, conn.copy).await,
        Err(e) => tracing::warn!(client = %peer, upstream = %target.forward, error = %e,
            "upstream unreachable; closing the client connection"),
    }
}

/// Serves one control link until it closes or sends something unparsable.
async fn control_link(sock: TcpStream, apply_tx: mpsc::Sender<ApplyRequest>) {
    tracing::info!("control link open");
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = (&mut r)
            .take(MAX_MESSAGE_LEN as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => {
                tracing::info!("control link closed by stowaway");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "control link failed");
                return;
            }
        }
        if line.last() != Some(&b'\n') {
            let reason = if line.len() > MAX_MESSAGE_LEN {
                format!("message longer than {MAX_MESSAGE_LEN} bytes")
            } else {
                "connection closed in the middle of a message".to_string()
            };
            refuse(&mut w, reason).await;
            return;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let msg: StowawayMessage = match serde_json::from_slice(text) {
            Ok(m) => m,
            Err(e) => {
                refuse(&mut w, format!("message does not parse: {e}")).await;
                return;
            }
        };
        let reply = match msg {
            StowawayMessage::Ping { .. } => CarrierReply::Pong {
                version: PROTOCOL_VERSION,
            },
            StowawayMessage::Configure { version, .. }
                if version == 0 || version > PROTOCOL_VERSION =>
            {
                tracing::warn!(
                    version,
                    "refusing a port map of an unknown protocol version"
                );
                CarrierReply::Error {
                    version: PROTOCOL_VERSION,
                    reason: format!("unsupported protocol version {version} (carrier speaks {PROTOCOL_VERSION})"),
                }
            }
            StowawayMessage::Configure { bridge, ports, .. } => {
                tracing::info!(bridge, ports = ports.len(), "port map received");
                let (reply_tx, reply_rx) = oneshot::channel();
                let req = ApplyRequest {
                    bridge,
                    ports,
                    reply: reply_tx,
                };
                if apply_tx.send(req).await.is_err() {
                    return;
                }
                match reply_rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        if let Err(e) = send(&mut w, &reply).await {
            tracing::warn!(error = %e, "control link failed");
            return;
        }
    }
}

/// Closes a link after a protocol error: logs the reason and tells the peer.
async fn refuse(w: &mut tokio::net::tcp::OwnedWriteHalf, reason: String) {
    tracing::warn!(%reason, "closing control link");
    let _ = send(
        w,
        &CarrierReply::Error {
            version: PROTOCOL_VERSION,
            reason,
        },
    )
    .await;
    let _ = w.shutdown().await;
}

async fn send(w: &mut tokio::net::tcp::OwnedWriteHalf, reply: &CarrierReply) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}
