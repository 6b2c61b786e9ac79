//! `carrier forward`: a standalone TCP port forwarder with many mappings.

use crate::serve::{self, ConnOptions, Limit};
use crate::target::{Resolver, Target};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One `listen -> to` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub listen: SocketAddr,
    pub to: Target,
}

#[derive(Debug, Clone)]
pub struct ForwardOptions {
    pub max_connections: u32,
    pub grace: Duration,
    pub conn: ConnOptions,
}

/// A mapping whose listener is bound.
pub struct Bound {
    pub listener: TcpListener,
    pub to: Target,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (for {to}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub to: String,
    #[source]
    pub source: io::Error,
}

/// Binds a listener the way carrier does: SO_REUSEADDR, and IPv6 sockets are
/// IPv6-only (so `[::]:P` and `0.0.0.0:P` can both be mapped).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_only_v6(true)?;
        s.set_nonblocking(true)?;
        TcpSocket::from_std_stream(s.into())
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    // The kernel caps this at net.core.somaxconn. A burst of connects beyond
    // the backlog turns into SYN cookies and, once those fail, resets.
    sock.listen(LISTEN_BACKLOG)
}

/// Accept backlog of carrier's listeners.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds every mapping, or fails on the first that cannot bind.
pub fn bind(mappings: &[Mapping]) -> Result<Vec<Bound>, BindError> {
    mappings
        .iter()
        .map(|m| {
            bind_listener(m.listen)
                .map(|listener| Bound {
                    listener,
                    to: m.to.clone(),
                })
                .map_err(|source| BindError {
                    addr: m.listen,
                    to: m.to.to_string(),
                    source,
                })
        })
        .collect()
}

/// Serves every bound mapping until `shutdown` resolves, then stops accepting
/// and drains open connections for at most `opts.grace`.
pub async fn run(bound: Vec<Bound>, opts: ForwardOptions, shutdown: impl Future<Output = ()>) {
    let limit = Limit::new(opts.max_connections);
    let resolver = Arc::new(Resolver::new());
    let conn = Arc::new(opts.conn.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = JoinSet::new();
    for b in bound {
        let to = Arc::new(b.to);
        if let Ok(addr) = b.listener.local_addr() {
            tracing::info!(listen = %addr, to = %to, "forwarding");
        }
        let resolver = resolver.clone();
        let conn = conn.clone();
        loops.spawn(serve::accept_loop(
            b.listener,
            limit.clone(),
            stop_rx.clone(),
            move |client, peer| {
                let to = to.clone();
                let resolver = resolver.clone();
                let conn = conn.clone();
                async move {
                    let addrs = match resolver.resolve(&to).await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(client = %peer, upstream = %to, error = %e,
                                "upstream unreachable; closing the client connection");
                            return;
                        }
                    };
                    match serve::connect(&addrs, &conn).await {
                        Ok(up) => serve::relay_logged(client, up, &[], conn.copy).await,
                        Err(e) => tracing::warn!(client = %peer, upstream = %to, error = %e,
                            "upstream unreachable; closing the client connection"),
                    }
                }
            },
        ));
    }
    shutdown.await;
    tracing::info!("shutdown: no new connections");
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    limit.drain(opts.grace).await;
}
