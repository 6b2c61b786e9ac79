//! Stowaway's side of bridges (owned by the carrier work): route listeners that
//! accept only the bridged Pods' IPs and carry each connection through the
//! tunnel to the local container, and the dialer that pushes port maps to
//! carriers. Placeholder: filled in by the carrier task.

use proto::cluster::BridgeSpec;
use proto::status::BridgeStatus;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// A byte stream through the tunnel (or, in tests, any stream).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}
pub type BoxStream = Box<dyn Stream>;
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;

/// Opens a TCP connection to `dst` (a local container's address on a client's
/// Docker network) through the tunnel of the peer that routes it.
pub trait Dial: Send + Sync + 'static {
    fn dial(&self, dst: SocketAddrV4) -> DialFuture;
}

/// Runs until `shutdown` resolves: applies every change of `bridges` live and
/// publishes the per-bridge state on `status_tx`. `pod_ip` is where carriers
/// reach the route ports.
pub async fn run<D: Dial + Clone>(
    bridges: watch::Receiver<Vec<BridgeSpec>>,
    pod_ip: Ipv4Addr,
    dialer: D,
    status_tx: watch::Sender<Vec<BridgeStatus>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let _ = (bridges, pod_ip, dialer, status_tx);
    shutdown.await;
}
