//! The test-bed DNS server over real UDP and TCP sockets on loopback, with a fixed zone.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gefyra_testbed::query::{query_a, QueryError};
use gefyra_testbed::{run, ServerConfig, Zone, ZoneLookup};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixed;
impl Zone for Fixed {
    fn service(&self, ns: &str, name: &str) -> ZoneLookup {
        match (ns, name) {
            ("default", "web") => ZoneLookup::Found(vec![Ipv4Addr::new(10, 96, 0, 10)]),
            ("db", "pg") => {
                ZoneLookup::Found((1..=100).map(|i| Ipv4Addr::new(172, 17, 1, i)).collect())
            }
            _ => ZoneLookup::NotFound,
        }
    }
    fn endpoint(&self, _: &str, _: &str, _: &str) -> ZoneLookup {
        ZoneLookup::NotFound
    }
}

async fn start(upstream: Option<SocketAddr>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let config = ServerConfig {
        domain: Name::from_ascii("cluster.local.").unwrap(),
        upstream,
    };
    tokio::spawn(run(config, Arc::new(Fixed), udp, tcp, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

fn ask(
    addr: SocketAddr,
    name: &'static str,
) -> tokio::task::JoinHandle<Result<Vec<Ipv4Addr>, QueryError>> {
    tokio::task::spawn_blocking(move || query_a(addr, name, Duration::from_secs(2)))
}

#[tokio::test]
async fn answers_over_udp() {
    let (addr, _stop) = start(None).await;
    assert_eq!(
        ask(addr, "web.default.svc.cluster.local")
            .await
            .unwrap()
            .unwrap(),
        vec![Ipv4Addr::new(10, 96, 0, 10)]
    );
    match ask(addr, "gone.default.svc.cluster.local").await.unwrap() {
        Err(QueryError::Rcode(_, ResponseCode::NXDomain)) => {}
        other => panic!("expected NXDOMAIN, got {other:?}"),
    }
    // no upstream: names outside the cluster domain are refused, never sent anywhere
    match ask(addr, "example.com").await.unwrap() {
        Err(QueryError::Rcode(_, ResponseCode::Refused)) => {}
        other => panic!("expected REFUSED, got {other:?}"),
    }
    // 100 addresses do not fit 512 bytes: truncated over UDP ...
    let r = ask(addr, "pg.db.svc.cluster.local").await.unwrap().unwrap();
    assert!(
        r.len() < 100,
        "UDP answer should be truncated, got {} records",
        r.len()
    );
}

#[tokio::test]
async fn answers_over_tcp_in_full() {
    let (addr, _stop) = start(None).await;
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("pg.db.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let bytes = q.to_vec().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // two queries on one connection
    for _ in 0..2 {
        s.write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.answers.len(), 100);
        assert!(m.metadata.authoritative);
    }
}

#[tokio::test]
async fn forwards_outside_names_to_the_upstream() {
    // the "upstream" is a second server on loopback; it refuses example.com, which proves the
    // first one forwarded the query and relayed the upstream's answer
    let (up, _stop_up) = start(None).await;
    let (addr, _stop) = start(Some(up)).await;
    match ask(addr, "example.com").await.unwrap() {
        Err(QueryError::Rcode(_, ResponseCode::Refused)) => {}
        other => panic!("expected the upstream's REFUSED, got {other:?}"),
    }
    // a dead upstream gives SERVFAIL after the forward timeout
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (addr2, _stop2) = start(Some(dead.local_addr().unwrap())).await;
    let r =
        tokio::task::spawn_blocking(move || query_a(addr2, "example.com", Duration::from_secs(5)))
            .await
            .unwrap();
    match r {
        Err(QueryError::Rcode(_, ResponseCode::ServFail)) => {}
        other => panic!("expected SERVFAIL, got {other:?}"),
    }
    // cluster names are still answered locally
    assert_eq!(
        ask(addr, "web.default.svc.cluster.local")
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
}
