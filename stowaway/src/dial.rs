//! Dialing a local container through the tunnel (bridged traffic): the
//! [`bridge::Dial`](crate::bridge::Dial) implementation. It finds the peer whose
//! tunnel address or Docker subnet holds the destination and asks that peer's
//! owner task to open a smoltcp TCP connection.

use crate::bridge::{Dial, DialFuture, RouteFuture};
use crate::peer::{Ctl, DialReply};
use ipnet::Ipv4Net;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// Where a peer's addresses are.
#[derive(Clone)]
pub struct Route {
    pub tunnel_ip: Ipv4Addr,
    pub subnet: Option<Ipv4Net>,
    pub ctl_tx: mpsc::Sender<Ctl>,
}

/// Cloneable handle that dials through the tunnel.
#[derive(Clone)]
pub struct TunnelDialer {
    routes: watch::Receiver<Arc<Vec<Route>>>,
}

impl TunnelDialer {
    pub fn new(routes: watch::Receiver<Arc<Vec<Route>>>) -> Self {
        TunnelDialer { routes }
    }

    fn peer_for(&self, ip: Ipv4Addr) -> Option<mpsc::Sender<Ctl>> {
        let routes = self.routes.borrow().clone();
        // the most specific match wins
        routes
            .iter()
            .filter_map(|r| {
                if r.tunnel_ip == ip {
                    Some((32u8, r))
                } else {
                    r.subnet
                        .filter(|n| n.contains(&ip))
                        .map(|n| (n.prefix_len(), r))
                }
            })
            .max_by_key(|(p, _)| *p)
            .map(|(_, r)| r.ctl_tx.clone())
    }
}

fn unreachable(dst: SocketAddrV4) -> io::Error {
    io::Error::new(
        io::ErrorKind::HostUnreachable,
        format!("no connected client routes {}", dst.ip()),
    )
}

fn removed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client removed")
}

impl Dial for TunnelDialer {
    fn dial(&self, dst: SocketAddrV4) -> DialFuture {
        let ctl = self.peer_for(*dst.ip());
        Box::pin(async move {
            let ctl = ctl.ok_or_else(|| unreachable(dst))?;
            let (tx, rx) = oneshot::channel();
            let reply = DialReply::Stream(tx);
            ctl.send(Ctl::Dial { dst, reply })
                .await
                .map_err(|_| removed())?;
            rx.await.map_err(|_| removed())?
        })
    }

    /// The routed socket becomes the flow's kernel side in the peer's owner.
    fn route(&self, dst: SocketAddrV4, client: TcpStream) -> RouteFuture {
        let ctl = self.peer_for(*dst.ip());
        Box::pin(async move {
            let ctl = ctl.ok_or_else(|| unreachable(dst))?;
            let (tx, rx) = oneshot::channel();
            let reply = DialReply::Attach(client, tx);
            ctl.send(Ctl::Dial { dst, reply })
                .await
                .map_err(|_| removed())?;
            rx.await.map_err(|_| removed())?
        })
    }
}
