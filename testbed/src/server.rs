//! UDP and TCP listeners: parse, answer from the zone or forward, reply.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::zone::{answer, encode, Answer, Zone};

/// How long a forwarded query may take, and how long an idle TCP client may stay.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The cluster domain, e.g. `cluster.local.`.
    pub domain: Name,
    /// Where names outside the cluster domain go; `None`: answer REFUSED.
    pub upstream: Option<SocketAddr>,
}

struct Shared {
    config: ServerConfig,
    zone: Arc<dyn Zone>,
}

/// Serves DNS on `udp` and `tcp` until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    zone: Arc<dyn Zone>,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared { config, zone });
    let udp = Arc::new(udp);
    let mut buf = vec![0u8; 4096];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = udp.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    // e.g. ICMP port unreachable reported on the socket: keep serving
                    Err(e) => { tracing::debug!(error = %e, "udp recv"); continue; }
                };
                let req = buf[..n].to_vec();
                let (shared, udp) = (shared.clone(), udp.clone());
                tokio::spawn(async move {
                    if let Some(resp) = handle(&shared, &req, true).await {
                        if let Err(e) = udp.send_to(&resp, peer).await {
                            tracing::debug!(%peer, error = %e, "udp send");
                        }
                    }
                });
            }
            r = tcp.accept() => {
                match r {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_tcp(&shared, stream).await {
                                tracing::debug!(%peer, error = %e, "tcp client");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tcp accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

async fn serve_tcp(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut req = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut req))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(resp) = handle(shared, &req, false).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return Ok(());
        };
        stream.write_all(&n.to_be_bytes()).await?;
        stream.write_all(&resp).await?;
    }
}

/// One request in, one response out (`None`: nothing sensible to send back).
async fn handle(shared: &Shared, raw: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "unparsable request");
            // FORMERR needs at least the id
            if raw.len() < 2 {
                return None;
            }
            let id = u16::from_be_bytes([raw[0], raw[1]]);
            let m = Message::error_msg(id, hickory_proto::op::OpCode::Query, ResponseCode::FormErr);
            return m.to_vec().ok();
        }
    };
    let forwarding = shared.config.upstream.is_some();
    match answer(
        shared.zone.as_ref(),
        &shared.config.domain,
        &req,
        forwarding,
    ) {
        Answer::Reply(resp) => {
            if let Some(q) = req.queries.first() {
                tracing::debug!(name = %q.name(), qtype = %q.query_type(), rcode = %resp.metadata.response_code,
                    answers = resp.answers.len(), "answered");
            }
            encode(&resp, &req, udp)
        }
        Answer::Forward => {
            let upstream = shared.config.upstream?;
            match forward(upstream, raw).await {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "forward failed");
                    let mut m = Message::error_msg(
                        req.metadata.id,
                        req.metadata.op_code,
                        ResponseCode::ServFail,
                    );
                    m.queries = req.queries.clone();
                    m.to_vec().ok()
                }
            }
        }
    }
}

async fn forward(upstream: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(raw).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(FORWARD_TIMEOUT, sock.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    buf.truncate(n);
    Ok(buf)
}
