//! One peer's network stack: a smoltcp interface in any-IP mode that ends the
//! peer's TCP connections for whatever destination they name, plus the UDP and
//! ICMP echo handling done directly on packets. Sans-IO: the owner feeds
//! decrypted IP packets in with [`NetStack::input`], calls [`NetStack::poll`],
//! and takes the IP packets to encrypt with [`NetStack::pop_output`].

use crate::packet::{self, Ipv4Info};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SDuration, Instant as SInstant};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address,
};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

/// Sizes of one stack. Memory per TCP flow is `tcp_rx + tcp_tx`.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The peer-facing address of this end (stowaway's tunnel IP).
    pub own_ip: Ipv4Addr,
    pub mtu: u16,
    pub tcp_rx: usize,
    pub tcp_tx: usize,
    /// Packets queued towards smoltcp before input is refused.
    pub max_in_queue: usize,
    /// Packets queued from smoltcp before it must wait for the owner to drain.
    pub max_out_queue: usize,
    /// TCP flows at most; a SYN beyond gets a RST.
    pub max_tcp_flows: usize,
}

impl StackConfig {
    pub fn new(own_ip: Ipv4Addr, mtu: u16) -> Self {
        StackConfig {
            own_ip,
            mtu,
            tcp_rx: 512 * 1024,
            tcp_tx: 512 * 1024,
            max_in_queue: 4096,
            max_out_queue: 1024,
            max_tcp_flows: 2048,
        }
    }
}

/// A TCP connection identity as the peer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    /// The peer side (dev container / client).
    pub remote: SocketAddrV4,
    /// The side we play (the destination the peer dialled).
    pub local: SocketAddrV4,
}

/// What [`NetStack::input`] did with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Queued for smoltcp (TCP of a known flow, or anything smoltcp answers itself).
    Queued,
    /// A SYN for a new connection: a listening socket was made for it.
    NewTcp {
        handle: SocketHandle,
        tuple: FourTuple,
    },
    /// A UDP datagram for the owner to forward.
    Udp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &'a [u8],
    },
    /// An ICMP echo request: the reply is queued.
    EchoAnswered,
    /// Not handled (malformed, fragment, other protocol, queue full).
    Dropped(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    Fragment,
    Protocol,
    QueueFull,
}

/// Packets from smoltcp, with a pool of reusable buffers.
struct OutQueue {
    tx: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    mtu: usize,
    max_tx: usize,
}

impl OutQueue {
    fn buffer(&mut self) -> Vec<u8> {
        self.pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu + 64))
    }
    fn recycle(&mut self, mut b: Vec<u8>) {
        if self.pool.len() < 512 {
            b.clear();
            self.pool.push(b);
        }
    }
}

/// smoltcp device over two packet queues.
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    rx_cur: Vec<u8>,
    out: OutQueue,
}

struct RxTok<'a> {
    buf: &'a [u8],
}

impl smoltcp::phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.buf)
    }
}

struct TxTok<'a> {
    out: &'a mut OutQueue,
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = self.out.buffer();
        b.resize(len, 0);
        let r = f(&mut b);
        self.out.tx.push_back(b);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxTok<'a>;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        let next = self.rx.pop_front()?;
        let prev = std::mem::replace(&mut self.rx_cur, next);
        self.out.recycle(prev);
        Some((RxTok { buf: &self.rx_cur }, TxTok { out: &mut self.out }))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<TxTok<'_>> {
        if self.out.tx.len() >= self.out.max_tx {
            return None;
        }
        Some(TxTok { out: &mut self.out })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.out.mtu;
        caps.max_burst_size = None;
        // WireGuard authenticates every packet: skip verifying, still compute.
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.tcp = Checksum::Tx;
        ck.udp = Checksum::Tx;
        ck.icmpv4 = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

/// One peer's stack.
pub struct NetStack {
    cfg: StackConfig,
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
    flows: HashMap<FourTuple, SocketHandle>,
    tuples: HashMap<SocketHandle, FourTuple>,
    epoch: Instant,
    scratch: Vec<u8>,
}

fn sv4(a: Ipv4Addr) -> Ipv4Address {
    a
}

impl NetStack {
    pub fn new(cfg: StackConfig, now: Instant) -> Self {
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            rx_cur: Vec::new(),
            out: OutQueue {
                tx: VecDeque::new(),
                pool: Vec::new(),
                mtu: usize::from(cfg.mtu),
                max_tx: cfg.max_out_queue,
            },
        };
        let config = Config::new(HardwareAddress::Ip);
        let mut iface = Interface::new(config, &mut dev, SInstant::from_micros(0));
        iface.set_any_ip(true);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(sv4(cfg.own_ip)), 32));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(sv4(cfg.own_ip));
        NetStack {
            cfg,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            flows: HashMap::new(),
            tuples: HashMap::new(),
            epoch: now,
            scratch: Vec::new(),
        }
    }

    fn ts(&self, now: Instant) -> SInstant {
        SInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    pub fn own_ip(&self) -> Ipv4Addr {
        self.cfg.own_ip
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.cfg.tcp_rx]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.cfg.tcp_tx]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_keep_alive(Some(SDuration::from_secs(60)));
        s.set_timeout(Some(SDuration::from_secs(180)));
        s
    }

    /// Feeds one IP packet from the peer (already authenticated and source-checked).
    pub fn input<'p>(&mut self, pkt: &'p [u8]) -> Input<'p> {
        let Some(ip) = packet::ipv4(pkt) else {
            return Input::Dropped(DropReason::Malformed);
        };
        if ip.fragment {
            return Input::Dropped(DropReason::Fragment);
        }
        match ip.proto {
            packet::PROTO_TCP => self.input_tcp(pkt, &ip),
            packet::PROTO_UDP => match packet::udp(pkt, &ip) {
                Some((sp, dp, payload)) => Input::Udp {
                    src: SocketAddrV4::new(ip.src, sp),
                    dst: SocketAddrV4::new(ip.dst, dp),
                    payload,
                },
                None => Input::Dropped(DropReason::Malformed),
            },
            packet::PROTO_ICMP => {
                let mut out = self.dev.out.buffer();
                if packet::icmp_echo_reply(pkt, &ip, &mut out) {
                    self.dev.out.tx.push_back(out);
                    Input::EchoAnswered
                } else {
                    self.dev.out.recycle(out);
                    Input::Dropped(DropReason::Protocol)
                }
            }
            _ => Input::Dropped(DropReason::Protocol),
        }
    }

    fn input_tcp<'p>(&mut self, pkt: &'p [u8], ip: &Ipv4Info) -> Input<'p> {
        let Some((sp, dp, flags)) = packet::tcp_ports(pkt, ip) else {
            return Input::Dropped(DropReason::Malformed);
        };
        if self.dev.rx.len() >= self.cfg.max_in_queue {
            return Input::Dropped(DropReason::QueueFull);
        }
        let tuple = FourTuple {
            remote: SocketAddrV4::new(ip.src, sp),
            local: SocketAddrV4::new(ip.dst, dp),
        };
        let mut result = Input::Queued;
        let is_syn = flags & packet::TCP_SYN != 0 && flags & packet::TCP_ACK == 0;
        if is_syn
            && !self.flows.contains_key(&tuple)
            && dp != 0
            && sp != 0
            && self.flows.len() < self.cfg.max_tcp_flows
        {
            let mut s = self.new_tcp_socket();
            let ep = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(sv4(ip.dst))),
                port: dp,
            };
            if s.listen(ep).is_ok() {
                let handle = self.sockets.add(s);
                self.flows.insert(tuple, handle);
                self.tuples.insert(handle, tuple);
                result = Input::NewTcp { handle, tuple };
            }
        }
        let mut b = self.dev.out.buffer();
        b.extend_from_slice(&pkt[..ip.total]);
        self.dev.rx.push_back(b);
        result
    }

    /// Queues a UDP datagram towards the peer. `false` if it does not fit or the queue is full.
    pub fn send_udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> bool {
        if self.dev.out.tx.len() >= self.cfg.max_out_queue * 2 {
            return false;
        }
        let mut out = self.dev.out.buffer();
        if packet::build_udp(&mut out, src, dst, payload) {
            self.dev.out.tx.push_back(out);
            true
        } else {
            self.dev.out.recycle(out);
            false
        }
    }

    /// Runs smoltcp over everything queued.
    pub fn poll(&mut self, now: Instant) {
        let ts = self.ts(now);
        let _ = self.iface.poll(ts, &mut self.dev, &mut self.sockets);
    }

    /// When smoltcp next needs a poll (`None`: only on new input).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let ts = self.ts(now);
        self.iface
            .poll_delay(ts, &self.sockets)
            .map(|d| now + std::time::Duration::from_micros(d.total_micros()))
    }

    /// Next IP packet to encrypt and send to the peer.
    pub fn pop_output(&mut self) -> Option<Vec<u8>> {
        self.dev.out.tx.pop_front()
    }

    /// Gives a buffer from [`pop_output`](Self::pop_output) back for reuse.
    pub fn recycle(&mut self, b: Vec<u8>) {
        self.dev.out.recycle(b);
    }

    pub fn output_len(&self) -> usize {
        self.dev.out.tx.len()
    }

    /// Opens a TCP connection from `local` (an address of ours) to `remote` (behind the peer).
    pub fn tcp_connect(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<SocketHandle, tcp::ConnectError> {
        let mut s = self.new_tcp_socket();
        s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(sv4(*remote.ip())), remote.port()),
            IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(sv4(*local.ip()))),
                port: local.port(),
            },
        )?;
        let handle = self.sockets.add(s);
        let tuple = FourTuple { remote, local };
        self.flows.insert(tuple, handle);
        self.tuples.insert(handle, tuple);
        Ok(handle)
    }

    /// Whether a local port is in use by a flow to `remote_ip`.
    pub fn local_port_used(&self, local: SocketAddrV4, remote: SocketAddrV4) -> bool {
        self.flows.contains_key(&FourTuple { remote, local })
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Reads what the peer sent on `h` into `buf`.
    pub fn tcp_recv(&mut self, h: SocketHandle, buf: &mut [u8]) -> usize {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.recv_slice(buf).unwrap_or(0)
    }

    /// Queues bytes towards the peer on `h`; returns how many were taken.
    pub fn tcp_send(&mut self, h: SocketHandle, data: &[u8]) -> usize {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.send_slice(data).unwrap_or(0)
    }

    /// Forgets a flow and frees its socket.
    pub fn tcp_remove(&mut self, h: SocketHandle) {
        if let Some(t) = self.tuples.remove(&h) {
            self.flows.remove(&t);
        }
        self.sockets.remove(h);
    }

    pub fn tcp_flows(&self) -> usize {
        self.flows.len()
    }

    /// Scratch buffer for callers (reused).
    pub fn scratch(&mut self) -> &mut Vec<u8> {
        &mut self.scratch
    }
}
