//! One owner task per peer: it owns the peer's WireGuard session and smoltcp
//! stack, and talks to the UDP dispatcher, the flow tasks and the bridge
//! dialer only through bounded channels.

use crate::flow::{self, Event, FlowId, TcpLink, UdpLink};
use crate::Shared;
use bytes::Bytes;
use ipnet::Ipv4Net;
use proto::config::PeerConfig;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tunnel::{wg, Input, NetStack, SocketHandle, StackConfig, TcpState, WgPeer};

/// A datagram from the dispatcher.
pub struct Datagram {
    pub from: SocketAddr,
    pub data: Bytes,
}

/// Requests to a peer task from outside the data path.
pub enum Ctl {
    /// Open a TCP connection through the tunnel to `dst` (bridges).
    Dial { dst: SocketAddrV4, reply: DialReply },
}

/// What a bridge dial gets once the connection through the tunnel is established.
pub enum DialReply {
    /// A stream to use (an in-memory pipe to the flow).
    Stream(oneshot::Sender<io::Result<crate::bridge::BoxStream>>),
    /// This kernel socket becomes the flow's kernel side (no pipe, no relay task);
    /// on failure it is dropped (FIN) and the error is sent.
    Attach(tokio::net::TcpStream, oneshot::Sender<io::Result<()>>),
}

impl DialReply {
    fn fail(self, e: io::Error) {
        match self {
            DialReply::Stream(r) => {
                let _ = r.send(Err(e));
            }
            DialReply::Attach(_sock, r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

/// What the status endpoint reads; written by the owner task.
#[derive(Default)]
pub struct PeerShared {
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// ms since the Unix epoch of the last completed handshake (0: never).
    pub last_handshake_ms: AtomicU64,
    pub endpoint: Mutex<Option<SocketAddr>>,
}

/// Everything a peer task needs to start.
pub struct PeerTaskArgs {
    pub cfg: PeerConfig,
    pub index: u32,
    pub keys: tunnel::StaticKeys,
    pub udp: Arc<UdpSocket>,
    /// Batched I/O state of `udp` (GSO).
    pub udp_state: Arc<quinn_udp::UdpSocketState>,
    pub shared: Arc<Shared>,
    pub status: Arc<PeerShared>,
    pub udp_rx: mpsc::Receiver<Datagram>,
    pub ctl_rx: mpsc::Receiver<Ctl>,
}

enum TcpKind {
    /// The peer dialled out; the flow task dials the kernel side.
    Accepted { connected: bool },
    /// We dialled the peer (bridge); `reply` waits for Established.
    Dialed {
        reply: Option<DialReply>,
        started: Instant,
    },
}

struct TcpFlow {
    handle: SocketHandle,
    kind: TcpKind,
    link: Option<TcpLink>,
    /// Chunks from the kernel side not yet in smoltcp (bounded by the credits).
    pending: std::collections::VecDeque<(Bytes, usize)>,
    kernel_eof: bool,
    fin_sent: bool,
    peer_fin: bool,
    created: Instant,
}

struct UdpFlow {
    /// The peer's address and the address it sent to (replies come from there).
    peer_side: SocketAddrV4,
    their_side: SocketAddrV4,
    link: UdpLink,
}

/// UDP flows per peer at most (each is a kernel socket); beyond, datagrams are dropped and counted.
const MAX_UDP_FLOWS: usize = 1024;
const TICK: Duration = Duration::from_millis(250);
const BATCH: usize = 256;
/// Bytes of encrypted datagrams sent in one go (GSO groups of up to 64 KB).
const SEND_BATCH_BYTES: usize = 256 * 1024;

pub async fn run(args: PeerTaskArgs) {
    let PeerTaskArgs {
        cfg,
        index,
        keys,
        udp,
        udp_state,
        shared,
        status,
        mut udp_rx,
        mut ctl_rx,
    } = args;
    let span = tracing::info_span!("peer", name = %cfg.name, tunnel_ip = %cfg.tunnel_ip);
    let now = Instant::now();
    let settings = shared.settings.clone();
    let mut stack_cfg = StackConfig::new(settings.tunnel_ip, settings.mtu);
    stack_cfg.tcp_rx = settings.tcp_buffer;
    stack_cfg.tcp_tx = settings.tcp_buffer;
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let mut p = Peer {
        wg: WgPeer::new(&keys, cfg.public_key.0, index, None, None),
        stack: NetStack::new(stack_cfg, now),
        allowed: cfg.subnet,
        cfg,
        udp,
        udp_state,
        batch: tunnel::DatagramBatch::new(SEND_BATCH_BYTES),
        shared,
        status,
        buf: vec![0u8; wg::BUF_SIZE],
        rx_pkt: Vec::with_capacity(2048),
        tcp: HashMap::new(),
        by_handle: HashMap::new(),
        udp_flows: HashMap::new(),
        udp_by_key: HashMap::new(),
        next_id: 1,
        events_tx,
        wake: Arc::new(Notify::new()),
        next_port: 40000,
        out: Vec::new(),
        last_tick: now,
    };
    tracing::info!(parent: &span, "peer added");
    loop {
        let deadline = p
            .stack
            .poll_at(Instant::now())
            .map(|t| t.min(p.last_tick + TICK))
            .unwrap_or(p.last_tick + TICK);
        let wake = p.wake.clone();
        tokio::select! {
            biased;
            d = udp_rx.recv() => match d {
                None => break,
                Some(d) => {
                    p.on_datagram(d);
                    for _ in 0..BATCH {
                        match udp_rx.try_recv() {
                            Ok(d) => p.on_datagram(d),
                            Err(_) => break,
                        }
                    }
                }
            },
            ev = events_rx.recv() => if let Some(ev) = ev {
                p.on_event(ev);
                for _ in 0..BATCH {
                    match events_rx.try_recv() {
                        Ok(ev) => p.on_event(ev),
                        Err(_) => break,
                    }
                }
            },
            ctl = ctl_rx.recv() => if let Some(ctl) = ctl { p.on_ctl(ctl) },
            _ = wake.notified() => {},
            _ = tokio::time::sleep_until(deadline.into()) => {},
        }
        p.service().await;
        if p.last_tick.elapsed() >= TICK {
            p.tick().await;
        }
    }
    // removed: close everything of this peer
    for (_, f) in p.tcp.drain() {
        if let Some(l) = f.link {
            l.task.abort();
        }
    }
    for (_, f) in p.udp_flows.drain() {
        f.link.task.abort();
    }
    tracing::info!(parent: &span, "peer removed");
}

struct Peer {
    cfg: PeerConfig,
    allowed: Option<Ipv4Net>,
    wg: WgPeer,
    stack: NetStack,
    udp: Arc<UdpSocket>,
    udp_state: Arc<quinn_udp::UdpSocketState>,
    /// Encrypted datagrams waiting for one batched (GSO) send.
    batch: tunnel::DatagramBatch,
    shared: Arc<Shared>,
    status: Arc<PeerShared>,
    buf: Vec<u8>,
    /// The packet being handed to the stack (reused).
    rx_pkt: Vec<u8>,
    tcp: HashMap<FlowId, TcpFlow>,
    by_handle: HashMap<SocketHandle, FlowId>,
    udp_flows: HashMap<FlowId, UdpFlow>,
    udp_by_key: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    next_id: FlowId,
    events_tx: mpsc::Sender<Event>,
    wake: Arc<Notify>,
    next_port: u16,
    /// Datagrams to send (handshake answers) collected while decapsulating.
    out: Vec<Vec<u8>>,
    last_tick: Instant,
}

impl Peer {
    fn source_allowed(&self, src: Ipv4Addr) -> bool {
        src == self.cfg.tunnel_ip || self.allowed.is_some_and(|n| n.contains(&src))
    }

    fn on_datagram(&mut self, d: Datagram) {
        // the decrypted packet goes through a reused buffer (no allocation per packet)
        let mut pkt = std::mem::take(&mut self.rx_pkt);
        pkt.clear();
        let Peer { wg, buf, out, .. } = self;
        let res = wg.decapsulate(d.from, &d.data, buf, |o| match o {
            tunnel::Out::Network(p) => out.push(p.to_vec()),
            tunnel::Out::Tunnel(p) => pkt.extend_from_slice(p),
        });
        if res.is_err() {
            self.shared.counters.bad_packets.fetch_add(1, Relaxed);
        } else if !pkt.is_empty() {
            self.on_ip(&pkt);
        }
        self.rx_pkt = pkt;
    }

    fn on_ip(&mut self, p: &[u8]) {
        let Some(ip) = tunnel::packet::ipv4(p) else {
            self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
            return;
        };
        if !self.source_allowed(ip.src) {
            self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
            return;
        }
        // The tunnel subnet is virtual: no address in it but stowaway's own exists in the cluster, so
        // nothing addressed there may be re-originated out of the Pod (it would leave for whatever
        // network happens to use that range).
        if ip.dst != self.shared.settings.tunnel_ip && in_tunnel_net(ip.dst) {
            self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
            return;
        }
        match self.stack.input(p) {
            Input::Queued => {}
            Input::NewTcp { handle, tuple } => {
                let id = self.next_id;
                self.next_id += 1;
                let mut dst = tuple.local;
                if *dst.ip() == self.shared.settings.tunnel_ip {
                    // stowaway's tunnel address serves DNS only: any other port is refused (RST)
                    match self.shared.settings.dns_upstream {
                        SocketAddr::V4(up) if dst.port() == 53 => dst = up,
                        _ => {
                            self.stack.tcp(handle).abort();
                            self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                }
                tracing::debug!(flow = id, src = %tuple.remote, dst = %dst, "tcp flow");
                let link = flow::spawn_tcp_dial(
                    id,
                    SocketAddr::V4(dst),
                    self.events_tx.clone(),
                    self.wake.clone(),
                );
                self.tcp.insert(
                    id,
                    TcpFlow {
                        handle,
                        kind: TcpKind::Accepted { connected: false },
                        link: Some(link),
                        pending: Default::default(),
                        kernel_eof: false,
                        fin_sent: false,
                        peer_fin: false,
                        created: Instant::now(),
                    },
                );
                self.by_handle.insert(handle, id);
                self.shared.counters.tcp_flows_total.fetch_add(1, Relaxed);
                self.shared.counters.tcp_flows_open.fetch_add(1, Relaxed);
            }
            Input::Udp { src, dst, payload } => {
                let payload = Bytes::copy_from_slice(payload);
                self.on_udp(src, dst, payload);
            }
            Input::EchoAnswered => {
                self.shared.counters.icmp_echo.fetch_add(1, Relaxed);
            }
            Input::Dropped(_) => {
                self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
            }
        }
    }

    fn on_udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: Bytes) {
        let key = (src, dst);
        let id = match self.udp_by_key.get(&key) {
            Some(id) => *id,
            None => {
                if self.udp_flows.len() >= MAX_UDP_FLOWS {
                    self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
                    return;
                }
                let is_dns = *dst.ip() == self.shared.settings.tunnel_ip && dst.port() == 53;
                if *dst.ip() == self.shared.settings.tunnel_ip && !is_dns {
                    self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
                    return;
                }
                let target = if is_dns {
                    match self.shared.settings.dns_upstream {
                        SocketAddr::V4(a) => a,
                        SocketAddr::V6(_) => return,
                    }
                } else {
                    dst
                };
                let idle = if is_dns || dst.port() == 53 {
                    Duration::from_secs(15)
                } else {
                    Duration::from_secs(60)
                };
                let id = self.next_id;
                self.next_id += 1;
                let dns = is_dns || dst.port() == 53;
                let link = flow::spawn_udp(id, target, idle, dns, self.events_tx.clone());
                self.udp_flows.insert(
                    id,
                    UdpFlow {
                        peer_side: src,
                        their_side: dst,
                        link,
                    },
                );
                self.udp_by_key.insert(key, id);
                self.shared.counters.udp_flows_total.fetch_add(1, Relaxed);
                self.shared.counters.udp_flows_open.fetch_add(1, Relaxed);
                id
            }
        };
        if *dst.ip() == self.shared.settings.tunnel_ip && dst.port() == 53 {
            self.shared.counters.dns_queries.fetch_add(1, Relaxed);
        }
        if let Some(f) = self.udp_flows.get(&id) {
            if f.link.to_kernel_tx.try_send(payload).is_err() {
                self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Connected(id) => {
                if let Some(f) = self.tcp.get_mut(&id) {
                    f.kind = TcpKind::Accepted { connected: true };
                }
            }
            Event::Data(id, b) => {
                if let Some(f) = self.tcp.get_mut(&id) {
                    f.pending.push_back((b, 0));
                }
            }
            Event::Eof(id) => {
                if let Some(f) = self.tcp.get_mut(&id) {
                    f.kernel_eof = true;
                }
            }
            Event::Failed(id) => {
                if let Some(f) = self.tcp.get_mut(&id) {
                    self.stack.tcp(f.handle).abort();
                    f.kernel_eof = true;
                    f.pending.clear();
                }
            }
            Event::UdpReply(id, b) => {
                if let Some(f) = self.udp_flows.get(&id) {
                    if !self.stack.send_udp(f.their_side, f.peer_side, &b) {
                        self.shared.counters.dropped_packets.fetch_add(1, Relaxed);
                    }
                }
            }
            Event::UdpClosed(id) => {
                if let Some(f) = self.udp_flows.remove(&id) {
                    self.udp_by_key.remove(&(f.peer_side, f.their_side));
                    self.shared.counters.udp_flows_open.fetch_sub(1, Relaxed);
                }
            }
        }
    }

    fn on_ctl(&mut self, ctl: Ctl) {
        match ctl {
            Ctl::Dial { dst, reply } => {
                let local_ip = self.shared.settings.tunnel_ip;
                let mut local = None;
                for _ in 0..25000 {
                    let port = self.next_port;
                    self.next_port = if port >= 64999 { 40000 } else { port + 1 };
                    let cand = SocketAddrV4::new(local_ip, port);
                    if !self.stack.local_port_used(cand, dst) {
                        local = Some(cand);
                        break;
                    }
                }
                let Some(local) = local else {
                    reply.fail(io::Error::new(io::ErrorKind::AddrInUse, "no free port"));
                    return;
                };
                match self.stack.tcp_connect(local, dst) {
                    Ok(handle) => {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.tcp.insert(
                            id,
                            TcpFlow {
                                handle,
                                kind: TcpKind::Dialed {
                                    reply: Some(reply),
                                    started: Instant::now(),
                                },
                                link: None,
                                pending: Default::default(),
                                kernel_eof: false,
                                fin_sent: false,
                                peer_fin: false,
                                created: Instant::now(),
                            },
                        );
                        self.by_handle.insert(handle, id);
                        self.shared.counters.tcp_flows_total.fetch_add(1, Relaxed);
                        self.shared.counters.tcp_flows_open.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        reply.fail(io::Error::other(format!("connect: {e:?}")));
                    }
                }
            }
        }
    }

    /// Moves data between smoltcp sockets and flow tasks, then sends what smoltcp produced.
    async fn service(&mut self) {
        let now = Instant::now();
        self.stack.poll(now);
        let mut done: Vec<(FlowId, bool)> = Vec::new();
        for (id, f) in self.tcp.iter_mut() {
            let s = self.stack.tcp(f.handle);
            let state = s.state();
            // bridge dials: hand the stream over once established
            if let TcpKind::Dialed { reply, started } = &mut f.kind {
                if reply.is_some() {
                    if state == TcpState::Established {
                        match reply.take() {
                            Some(DialReply::Stream(r)) => {
                                let (a, b) = tokio::io::duplex(256 * 1024);
                                if r.send(Ok(Box::new(a))).is_ok() {
                                    f.link = Some(flow::spawn_stream(
                                        *id,
                                        b,
                                        self.events_tx.clone(),
                                        self.wake.clone(),
                                    ));
                                } else {
                                    s.abort();
                                }
                            }
                            Some(DialReply::Attach(sock, r)) => {
                                if r.send(Ok(())).is_ok() {
                                    f.link = Some(flow::spawn_stream(
                                        *id,
                                        sock,
                                        self.events_tx.clone(),
                                        self.wake.clone(),
                                    ));
                                } else {
                                    s.abort();
                                }
                            }
                            None => {}
                        }
                    } else if state == TcpState::Closed || started.elapsed() > flow::CONNECT_TIMEOUT
                    {
                        if let Some(r) = reply.take() {
                            r.fail(io::Error::new(
                                io::ErrorKind::ConnectionRefused,
                                "connection through the tunnel refused or timed out",
                            ));
                        }
                        s.abort();
                        done.push((*id, false));
                        continue;
                    }
                }
            }
            if state == TcpState::Listen && f.created.elapsed() > Duration::from_secs(5) {
                done.push((*id, false));
                continue;
            }
            // kernel -> peer
            while let Some((b, off)) = f.pending.front_mut() {
                if !s.may_send() {
                    break;
                }
                let n = s.send_slice(&b[*off..]).unwrap_or(0);
                *off += n;
                if *off >= b.len() {
                    f.pending.pop_front();
                    if let Some(l) = &f.link {
                        l.credits.add_permits(1);
                    }
                } else {
                    break;
                }
            }
            if f.kernel_eof && f.pending.is_empty() && !f.fin_sent {
                s.close();
                f.fin_sent = true;
            }
            // peer -> kernel
            let connected = match &f.kind {
                TcpKind::Accepted { connected } => *connected,
                TcpKind::Dialed { reply, .. } => reply.is_none(),
            };
            if connected {
                if let Some(l) = &mut f.link {
                    if let Some(tx) = &l.to_kernel_tx {
                        while s.can_recv() {
                            let permit = match tx.try_reserve() {
                                Ok(p) => p,
                                Err(_) => {
                                    // Full: ask the flow task for a wake-up, then look
                                    // again (it may have taken a chunk in between).
                                    l.blocked.store(true, Relaxed);
                                    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                                    match tx.try_reserve() {
                                        Ok(p) => p,
                                        Err(_) => break,
                                    }
                                }
                            };
                            let r = s.recv(|buf| {
                                let n = buf.len().min(flow::CHUNK);
                                (n, Bytes::copy_from_slice(&buf[..n]))
                            });
                            match r {
                                Ok(b) if !b.is_empty() => permit.send(b),
                                _ => break,
                            }
                        }
                    }
                    if !s.may_recv()
                        && !s.can_recv()
                        && l.to_kernel_tx.is_some()
                        && state != TcpState::SynReceived
                        && state != TcpState::Listen
                    {
                        // the peer sent FIN (or the connection is gone): FIN to the kernel side
                        l.to_kernel_tx = None;
                        f.peer_fin = true;
                    }
                }
            }
            if state == TcpState::Closed || state == TcpState::TimeWait {
                let graceful = f.kernel_eof && f.peer_fin;
                done.push((*id, graceful));
            }
        }
        for (id, graceful) in done {
            if let Some(f) = self.tcp.remove(&id) {
                self.by_handle.remove(&f.handle);
                self.stack.tcp_remove(f.handle);
                if let Some(l) = f.link {
                    if !graceful {
                        l.task.abort();
                    }
                }
                self.shared.counters.tcp_flows_open.fetch_sub(1, Relaxed);
            }
        }
        self.stack.poll(now);
        self.flush().await;
    }

    /// Encrypts and sends everything queued.
    async fn flush(&mut self) {
        let ep = self.wg.endpoint();
        for d in std::mem::take(&mut self.out) {
            if let Some(ep) = ep {
                let _ = self.udp.send_to(&d, ep).await;
            }
        }
        let Some(ep) = ep else {
            while let Some(p) = self.stack.pop_output() {
                self.stack.recycle(p);
            }
            return;
        };
        while let Some(p) = self.stack.pop_output() {
            let need = p.len() + wg::WG_OVERHEAD + 16;
            if self.batch.space(need).is_none() {
                self.send_batch(ep).await;
            }
            if let Some(space) = self.batch.space(need.max(148)) {
                if let Ok(Some(d)) = self.wg.encapsulate(&p, space) {
                    let n = d.len();
                    self.batch.commit(n);
                }
            }
            self.stack.recycle(p);
        }
        self.send_batch(ep).await;
    }

    async fn send_batch(&mut self, ep: SocketAddr) {
        if self.batch.is_empty() {
            return;
        }
        if let Err(e) = crate::udpio::send_batch(&self.udp, &self.udp_state, ep, &self.batch).await
        {
            tracing::debug!(error = %e, "udp send");
        }
        self.batch.clear();
    }

    async fn tick(&mut self) {
        self.last_tick = Instant::now();
        if let Some(d) = self.wg.update_timers(&mut self.buf) {
            if let Some(ep) = self.wg.endpoint() {
                let _ = self.udp.send_to(d, ep).await;
            }
        }
        let (tx, rx) = self.wg.bytes();
        self.status.tx_bytes.store(tx, Relaxed);
        self.status.rx_bytes.store(rx, Relaxed);
        if let Some(age) = self.wg.time_since_handshake() {
            let at = std::time::SystemTime::now()
                .checked_sub(age)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            self.status.last_handshake_ms.store(at, Relaxed);
        }
        let ep = self.wg.endpoint();
        if let Ok(mut e) = self.status.endpoint.lock() {
            if *e != ep {
                *e = ep;
            }
        }
    }
}

/// Whether `ip` lies in the tunnel subnet (`proto::TUNNEL_NET`/`proto::TUNNEL_PREFIX`).
fn in_tunnel_net(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(proto::TUNNEL_PREFIX));
    u32::from(ip) & mask == u32::from(proto::TUNNEL_NET) & mask
}

#[cfg(test)]
mod tunnel_net_tests {
    use super::in_tunnel_net;
    use std::net::Ipv4Addr;

    #[test]
    fn tunnel_subnet_is_recognised() {
        assert!(in_tunnel_net(Ipv4Addr::new(192, 168, 99, 1)));
        assert!(in_tunnel_net(Ipv4Addr::new(192, 168, 99, 254)));
        assert!(!in_tunnel_net(Ipv4Addr::new(192, 168, 98, 1)));
        assert!(!in_tunnel_net(Ipv4Addr::new(10, 96, 0, 1)));
    }
}
