//! A tiny DNS client (A records), used by `testbed-dns query` (the bed's health
//! check) and by tests.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("bad name {0:?}: {1}")]
    Name(String, String),
    #[error("DNS I/O with {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("bad response: {0}")]
    Decode(String),
    #[error("{0} answered {1}")]
    Rcode(SocketAddr, ResponseCode),
}

/// Asks `server` over UDP for the A records of `name` (absolute or not: a final dot is added).
pub fn query_a(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, QueryError> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let qname =
        Name::from_ascii(&fqdn).map_err(|e| QueryError::Name(name.into(), e.to_string()))?;
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname, RecordType::A));
    let bytes = msg
        .to_vec()
        .map_err(|e| QueryError::Decode(e.to_string()))?;
    let io = |e| QueryError::Io(server, e);
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| QueryError::Decode("bind address".into()))?;
    let sock = UdpSocket::bind(bind).map_err(io)?;
    sock.set_read_timeout(Some(timeout)).map_err(io)?;
    sock.connect(server).map_err(io)?;
    sock.send(&bytes).map_err(io)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).map_err(io)?;
        let resp = Message::from_vec(&buf[..n]).map_err(|e| QueryError::Decode(e.to_string()))?;
        if resp.metadata.id != msg.metadata.id {
            continue;
        }
        if resp.metadata.response_code != ResponseCode::NoError {
            return Err(QueryError::Rcode(server, resp.metadata.response_code));
        }
        return Ok(resp
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect());
    }
}
