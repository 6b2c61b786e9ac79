//! The kernel side of tunnelled flows. Each flow runs in its own task and talks
//! to its peer's owner task through bounded channels: the owner keeps the
//! smoltcp socket, the flow task keeps the kernel socket (or, for bridged
//! connections, the stream handed to the bridge module).

use bytes::{Bytes, BytesMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify, Semaphore};

/// Chunk size read from a kernel socket.
pub const CHUNK: usize = 64 * 1024;
/// Chunks a flow may have in flight towards the owner (per direction).
pub const CREDITS: usize = 4;
/// How long a TCP dial may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type FlowId = u64;

/// What flow tasks tell the owner.
#[derive(Debug)]
pub enum Event {
    /// The kernel connection is up (TCP, accepted flows).
    Connected(FlowId),
    /// Bytes for the peer.
    Data(FlowId, Bytes),
    /// The kernel side sent FIN.
    Eof(FlowId),
    /// Dial failed or the kernel connection broke: reset the peer's side.
    Failed(FlowId),
    /// A UDP answer for the peer.
    UdpReply(FlowId, Bytes),
    /// A UDP flow ended (idle).
    UdpClosed(FlowId),
}

/// The owner's handles to one TCP flow task.
pub struct TcpLink {
    /// Bytes from the peer to the kernel side. Dropped: FIN to the kernel side.
    pub to_kernel_tx: Option<mpsc::Sender<Bytes>>,
    /// Set by the owner when `to_kernel_tx` was full: the flow task wakes it
    /// once it took a chunk (and only then: no wake-up per chunk).
    pub blocked: Arc<AtomicBool>,
    /// The owner adds a permit back once a chunk is fully in smoltcp.
    pub credits: Arc<Semaphore>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Dials `dst` then splices it (accepted flows).
pub fn spawn_tcp_dial(
    id: FlowId,
    dst: SocketAddr,
    events_tx: mpsc::Sender<Event>,
    wake: Arc<Notify>,
) -> TcpLink {
    let (to_kernel_tx, to_kernel_rx) = mpsc::channel(CREDITS);
    let credits = Arc::new(Semaphore::new(CREDITS));
    let c = credits.clone();
    let blocked = Arc::new(AtomicBool::new(false));
    let b = blocked.clone();
    let task = tokio::spawn(async move {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(flow = id, %dst, error = %e, "dial failed");
                let _ = events_tx.send(Event::Failed(id)).await;
                return;
            }
            Err(_) => {
                tracing::debug!(flow = id, %dst, "dial timed out");
                let _ = events_tx.send(Event::Failed(id)).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if events_tx.send(Event::Connected(id)).await.is_err() {
            return;
        }
        splice(id, stream, to_kernel_rx, events_tx, c, (b, wake)).await;
    });
    TcpLink {
        to_kernel_tx: Some(to_kernel_tx),
        blocked,
        credits,
        task,
    }
}

/// Splices an already open stream (bridged flows: the other end went to the bridge module).
pub fn spawn_stream<S>(
    id: FlowId,
    stream: S,
    events_tx: mpsc::Sender<Event>,
    wake: Arc<Notify>,
) -> TcpLink
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (to_kernel_tx, to_kernel_rx) = mpsc::channel(CREDITS);
    let credits = Arc::new(Semaphore::new(CREDITS));
    let c = credits.clone();
    let blocked = Arc::new(AtomicBool::new(false));
    let b = blocked.clone();
    let task = tokio::spawn(splice(id, stream, to_kernel_rx, events_tx, c, (b, wake)));
    TcpLink {
        to_kernel_tx: Some(to_kernel_tx),
        blocked,
        credits,
        task,
    }
}

async fn splice<S>(
    id: FlowId,
    stream: S,
    mut to_kernel_rx: mpsc::Receiver<Bytes>,
    events_tx: mpsc::Sender<Event>,
    credits: Arc<Semaphore>,
    (blocked, wake): (Arc<AtomicBool>, Arc<Notify>),
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let ev = events_tx.clone();
    let writer = async move {
        while let Some(chunk) = to_kernel_rx.recv().await {
            // Room in the channel again: if the owner found it full, let it
            // read more from smoltcp while this chunk goes to the kernel.
            std::sync::atomic::fence(Ordering::SeqCst);
            if blocked.swap(false, Ordering::SeqCst) {
                wake.notify_one();
            }
            if wr.write_all(&chunk).await.is_err() {
                let _ = ev.send(Event::Failed(id)).await;
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let reader = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            let Ok(permit) = credits.acquire().await else {
                return;
            };
            permit.forget();
            if buf.capacity() < CHUNK / 2 {
                buf = BytesMut::with_capacity(CHUNK);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = events_tx.send(Event::Eof(id)).await;
                    return;
                }
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if events_tx.send(Event::Data(id, chunk)).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = events_tx.send(Event::Failed(id)).await;
                    return;
                }
            }
        }
    };
    tokio::join!(writer, reader);
}

/// The owner's handle to one UDP flow task.
pub struct UdpLink {
    pub to_kernel_tx: mpsc::Sender<Bytes>,
    pub task: tokio::task::JoinHandle<()>,
}

/// How long a DNS flow stays open after an answer (a resolver's A and AAAA
/// queries share a port and are answered within milliseconds).
pub const DNS_LINGER: Duration = Duration::from_secs(1);

/// A kernel UDP socket "connected" to `dst`; closes after `idle` without
/// traffic, or (`dns`) [`DNS_LINGER`] after an answer: each DNS query comes from
/// a fresh port, and a flow holds a 64 KiB receive buffer.
pub fn spawn_udp(
    id: FlowId,
    dst: SocketAddrV4,
    idle: Duration,
    dns: bool,
    events_tx: mpsc::Sender<Event>,
) -> UdpLink {
    let (to_kernel_tx, mut to_kernel_rx) = mpsc::channel::<Bytes>(64);
    let task = tokio::spawn(async move {
        let sock = match UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await {
            Ok(s) => s,
            Err(_) => {
                let _ = events_tx.send(Event::UdpClosed(id)).await;
                return;
            }
        };
        if sock.connect(SocketAddr::V4(dst)).await.is_err() {
            let _ = events_tx.send(Event::UdpClosed(id)).await;
            return;
        }
        let mut buf = vec![0u8; 65536];
        let mut idle = idle;
        loop {
            tokio::select! {
                out = to_kernel_rx.recv() => match out {
                    Some(d) => { let _ = sock.send(&d).await; }
                    None => return,
                },
                // (ICMP errors such as port unreachable surface as Err: keep the flow)
                r = sock.recv(&mut buf) => if let Ok(n) = r {
                    if events_tx.send(Event::UdpReply(id, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                    if dns {
                        idle = DNS_LINGER;
                    }
                },
                _ = tokio::time::sleep(idle) => {
                    let _ = events_tx.send(Event::UdpClosed(id)).await;
                    return;
                }
            }
        }
    });
    UdpLink { to_kernel_tx, task }
}
