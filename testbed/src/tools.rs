//! Small network tools the smoke tests run inside Pods and containers (the bed's
//! busybox has no UDP in its `nc`): a UDP echo server and a one-shot UDP client.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Echoes every datagram back to its sender, prefixed with `prefix` (e.g. the Pod name),
/// until `max` datagrams were served (`None`: forever).
pub fn udp_echo(sock: &UdpSocket, prefix: &str, max: Option<u64>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut served = 0u64;
    while max.is_none_or(|m| served < m) {
        let (n, peer) = sock.recv_from(&mut buf)?;
        let mut out = Vec::with_capacity(prefix.len() + n);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&buf[..n]);
        sock.send_to(&out, peer)?;
        served += 1;
    }
    Ok(())
}

/// Sends `message` to `to` and returns the first reply, retrying `tries` times with `timeout` each.
pub fn udp_ask(
    to: SocketAddr,
    message: &[u8],
    timeout: Duration,
    tries: u32,
) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.connect(to)?;
    let mut buf = vec![0u8; 65536];
    let mut last = std::io::Error::from(std::io::ErrorKind::TimedOut);
    for _ in 0..tries.max(1) {
        sock.send(message)?;
        match sock.recv(&mut buf) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_and_ask_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || udp_echo(&server, "pod-a:", Some(1)));
        let reply = udp_ask(addr, b"ping", Duration::from_secs(2), 3).unwrap();
        assert_eq!(reply, b"pod-a:ping");
        t.join().unwrap().unwrap();
    }
}
