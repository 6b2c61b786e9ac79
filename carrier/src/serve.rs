//! What both modes share: accept loops under a connection limit, dialing the
//! upstream (optionally from a fixed source address), and draining on shutdown.

use crate::proxy::{self, CopyMode};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Settings common to every forwarded connection.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub copy: CopyMode,
    pub connect_timeout: Duration,
    /// Bind outgoing connections to this source address (port 0).
    pub source_ip: Option<IpAddr>,
}

impl Default for ConnOptions {
    fn default() -> Self {
        ConnOptions {
            copy: CopyMode::Splice,
            connect_timeout: Duration::from_secs(10),
            source_ip: None,
        }
    }
}

/// The global limit on open connections; also what shutdown drains.
#[derive(Clone)]
pub struct Limit {
    sem: Arc<Semaphore>,
    max: u32,
}

impl Limit {
    pub fn new(max: u32) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS as u32);
        Limit {
            sem: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    pub fn open(&self) -> u32 {
        self.max - self.sem.available_permits() as u32
    }

    /// Waits until every connection ended, at most `grace`. Returns how many
    /// were still open when the grace ran out.
    pub async fn drain(&self, grace: Duration) -> u32 {
        let open = self.open();
        if open == 0 {
            return 0;
        }
        tracing::info!(
            open,
            grace_secs = grace.as_secs_f64(),
            "draining connections"
        );
        match tokio::time::timeout(grace, self.sem.acquire_many(self.max)).await {
            Ok(_) => 0,
            Err(_) => {
                let left = self.open();
                tracing::warn!(
                    open = left,
                    "grace time over; closing remaining connections"
                );
                left
            }
        }
    }
}

/// Accepts on `listener` until `stop` turns true; each accepted connection
/// (under the limit) is handed to `handle` in its own task, which keeps the
/// permit until it ends. When the limit is reached, accepting pauses (new
/// clients wait in the kernel's backlog).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limit: Limit,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    loop {
        let permit: OwnedSemaphorePermit = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            p = limit.sem.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (sock, peer) = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listen = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let span = tracing::debug_span!("conn", client = %peer, listen = ?local);
        let fut = handle(sock, peer);
        tokio::spawn(
            async move {
                fut.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Dials the first of `addrs` that answers.
pub async fn connect(addrs: &[SocketAddr], opts: &ConnOptions) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for addr in addrs {
        match tokio::time::timeout(opts.connect_timeout, connect_one(*addr, opts.source_ip)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr}: connect timed out"),
                )
            }
        }
    }
    Err(last)
}

async fn connect_one(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    match source {
        Some(ip) if ip.is_ipv4() == addr.is_ipv4() => {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await
        }
        _ => TcpStream::connect(addr).await,
    }
}

/// Relays an accepted client to `upstream`, logging the outcome at debug (a
/// reset in the middle of a stream is the peers' business, not an error of
/// carrier's).
pub async fn relay_logged(client: TcpStream, upstream: TcpStream, prefix: &[u8], copy: CopyMode) {
    match proxy::relay(client, upstream, prefix, copy).await {
        Ok(m) => tracing::debug!(up = m.a_to_b, down = m.b_to_a, "closed"),
        Err(e) => tracing::debug!(error = %e, "closed with error"),
    }
}
