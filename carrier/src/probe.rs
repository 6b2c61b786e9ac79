//! Answering the kubelet's httpGet probes on a bridged port.
//!
//! The first bytes of a connection are read (up to the end of the request
//! head); a request whose `User-Agent` starts with `kube-probe/` is answered
//! by carrier with 200, anything else is forwarded byte for byte, the bytes
//! already read first.

use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest request head inspected; longer heads are forwarded untouched.
const MAX_HEAD: usize = 16 * 1024;
/// Time for the rest of a request head once its first byte arrived.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

pub const PROBE_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 40\r\n\
Connection: close\r\n\
\r\n\
ok: this container is bridged by gefyra\n";

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A kubelet probe: answer it here.
    KubeProbe,
    /// Anything else: forward, starting with these bytes.
    Forward(Vec<u8>),
}

/// Reads the beginning of `client` and classifies it.
pub async fn sniff(client: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    // The first byte may take as long as the client likes.
    let n = client.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    if n == 0 || !buf[0].is_ascii_uppercase() {
        return Ok(Head::Forward(buf));
    }
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if let Some(end) = find_head_end(&buf) {
            return Ok(if is_kube_probe(&buf[..end]) {
                Head::KubeProbe
            } else {
                Head::Forward(buf)
            });
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::Forward(buf));
        }
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok(Head::Forward(buf)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Writes the 200 answer and closes the write side.
pub async fn answer(client: &mut TcpStream) -> io::Result<()> {
    client.write_all(PROBE_RESPONSE).await?;
    client.shutdown().await
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn is_kube_probe(head: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(head) else {
        return false;
    };
    let mut lines = text.split("\r\n");
    let Some(request_line) = lines.next() else {
        return false;
    };
    if !request_line.ends_with("HTTP/1.1") && !request_line.ends_with("HTTP/1.0") {
        return false;
    }
    lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("user-agent")
                && value.trim_start().starts_with("kube-probe/")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        assert!(is_kube_probe(
            b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\n\r\n"
        ));
        assert!(is_kube_probe(
            b"GET / HTTP/1.1\r\nuser-agent:kube-probe/1.33\r\n\r\n"
        ));
        assert!(!is_kube_probe(
            b"GET / HTTP/1.1\r\nUser-Agent: curl/8.0\r\n\r\n"
        ));
        assert!(!is_kube_probe(
            b"GET / HTTP/1.1\r\nX-Note: User-Agent: kube-probe/1\r\n\r\n"
        ));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        let len = PROBE_RESPONSE.len()
            - PROBE_RESPONSE
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap()
            - 4;
        assert_eq!(len, 40);
    }
}
