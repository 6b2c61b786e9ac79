//! stowaway in-process on loopback, with a WireGuard client built from the
//! `tunnel` crate: bridge dials through the tunnel, TCP/UDP flows out of it,
//! peers applied live, bad datagrams counted, a bad config file refused.

use proto::config::PeerConfig;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stowaway::bridge::Dial;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tunnel::{wg, Input, NetStack, Out, StackConfig, StaticKeys, TcpState, WgPeer};

/// (socket, bytes still to send, where the reply goes, bytes received)
type Outgoing = (
    tunnel::SocketHandle,
    Vec<u8>,
    Option<tokio::sync::oneshot::Sender<Vec<u8>>>,
    Vec<u8>,
);

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 2);

fn settings(key: [u8; 32]) -> stowaway::Settings {
    stowaway::Settings {
        private_key: key,
        tunnel_ip: proto::STOWAWAY_TUNNEL_IP,
        mtu: 1420,
        dns_upstream: SocketAddr::from(([127, 0, 0, 1], 53)),
        pod_ip: Ipv4Addr::LOCALHOST,
        tcp_buffer: 256 * 1024,
    }
}

/// A client: echoes every TCP connection made to it; `connect_rx` asks it to
/// open a connection to (dst) and send `payload`, the reply comes back on the oneshot.
async fn client(
    keys: StaticKeys,
    server_pub: [u8; 32],
    server: SocketAddr,
    mut connect_rx: mpsc::Receiver<(SocketAddrV4, Vec<u8>, tokio::sync::oneshot::Sender<Vec<u8>>)>,
) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(server).await.unwrap();
    let mut wgp = WgPeer::new(&keys, server_pub, 9, None, Some(server));
    let mut stack = NetStack::new(StackConfig::new(CLIENT_IP, 1420), Instant::now());
    let mut buf = vec![0u8; wg::BUF_SIZE];
    let mut rbuf = vec![0u8; wg::BUF_SIZE];
    let mut echo = Vec::new();
    let mut outgoing: Vec<Outgoing> = Vec::new();
    let mut port = 41000u16;
    if let Some(d) = wgp.force_handshake(&mut buf) {
        udp.send(d).await.unwrap();
    }
    loop {
        tokio::select! {
            r = udp.recv(&mut rbuf) => {
                let Ok(n) = r else { continue };
                let mut net = Vec::new();
                let mut tun = Vec::new();
                let _ = wgp.decapsulate(server, &rbuf[..n], &mut buf, |o| match o {
                    Out::Network(p) => net.push(p.to_vec()),
                    Out::Tunnel(p) => tun.push(p.to_vec()),
                });
                for d in net { let _ = udp.send(&d).await; }
                for p in tun {
                    if let Input::NewTcp { handle, .. } = stack.input(&p) { echo.push(handle); }
                }
            }
            c = connect_rx.recv() => {
                let Some((dst, payload, reply)) = c else { return };
                port += 1;
                let h = stack.tcp_connect(SocketAddrV4::new(CLIENT_IP, port), dst).unwrap();
                outgoing.push((h, payload, Some(reply), Vec::new()));
            }
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        stack.poll(Instant::now());
        let mut tmp = vec![0u8; 65536];
        for h in &echo {
            let n = stack.tcp_recv(*h, &mut tmp);
            if n > 0 {
                stack.tcp_send(*h, &tmp[..n]);
            }
            if !stack.tcp(*h).may_recv() && stack.tcp(*h).state() == TcpState::CloseWait {
                stack.tcp(*h).close();
            }
        }
        for (h, payload, reply, got) in &mut outgoing {
            if !payload.is_empty() && stack.tcp(*h).may_send() {
                let n = stack.tcp_send(*h, payload);
                payload.drain(..n);
                if payload.is_empty() {
                    stack.tcp(*h).close();
                }
            }
            let n = stack.tcp_recv(*h, &mut tmp);
            got.extend_from_slice(&tmp[..n]);
            let state = stack.tcp(*h).state();
            let peer_closed = matches!(
                state,
                TcpState::CloseWait
                    | TcpState::LastAck
                    | TcpState::TimeWait
                    | TcpState::Closing
                    | TcpState::Closed
            );
            if peer_closed && !stack.tcp(*h).can_recv() && reply.is_some() {
                let _ = reply.take().unwrap().send(std::mem::take(got));
            }
        }
        stack.poll(Instant::now());
        while let Some(p) = stack.pop_output() {
            if let Ok(Some(d)) = wgp.encapsulate(&p, &mut buf) {
                let _ = udp.send(d).await;
            }
            stack.recycle(p);
        }
        if let Some(d) = wgp.update_timers(&mut buf) {
            let _ = udp.send(d).await;
        }
    }
}

#[tokio::test]
async fn dial_through_the_tunnel_and_flows_out_of_it() {
    let server_keys = StaticKeys::from_private([41u8; 32]);
    let client_keys = StaticKeys::from_private([42u8; 32]);
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = udp.local_addr().unwrap();
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health.local_addr().unwrap();
    let peer = PeerConfig {
        name: "t".into(),
        public_key: proto::keys::Key(client_keys.public.to_bytes()),
        tunnel_ip: CLIENT_IP,
        subnet: Some("10.77.2.0/24".parse().unwrap()),
    };
    // start with no peers: the peer is added live
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let (_bridges_tx, bridges_rx) = watch::channel(Vec::new());
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Vec::new()));
    let dialer = stowaway::dial::TunnelDialer::new(routes_rx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let srv = tokio::spawn(stowaway::run_with_routes(
        settings([41u8; 32]),
        udp,
        health,
        peers_rx,
        bridges_rx,
        routes_tx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    // a client that is not configured gets nowhere (and the datagrams are counted)
    let (ctx, crx) = mpsc::channel(4);
    let cl = tokio::spawn(client(
        client_keys.clone(),
        server_keys.public.to_bytes(),
        server_addr,
        crx,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = get_status(health_addr).await;
    assert!(
        st.counters.bad_packets >= 1,
        "unknown peer's initiation counted: {:?}",
        st.counters
    );
    peers_tx.send(vec![peer.clone()]).unwrap();

    // the client's handshake retries (boringtun: 5 s) would be slow; start a fresh client
    cl.abort();
    let (ctx2, crx2) = mpsc::channel(4);
    drop(ctx);
    let _cl = tokio::spawn(client(
        client_keys,
        server_keys.public.to_bytes(),
        server_addr,
        crx2,
    ));

    // bridge dial: stowaway -> tunnel -> client's echo server on a dev-container address
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 77, 2, 5), 8080);
    let mut stream = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match dialer.dial(dst).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("dial through the tunnel");
    let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert!(back == msg, "echoed through the tunnel");
    // an address no peer routes
    assert!(dialer
        .dial(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80))
        .await
        .is_err());

    // a flow out of the tunnel: the client dials a kernel listener on loopback
    let kl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(kaddr) = kl.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = kl.accept().await {
            tokio::spawn(async move {
                let mut v = Vec::new();
                let _ = s.read_to_end(&mut v).await;
                v.reverse();
                let _ = s.write_all(&v).await;
            });
        }
    });
    let (rtx, rrx) = tokio::sync::oneshot::channel();
    ctx2.send((kaddr, b"stowaway".to_vec(), rtx)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rrx)
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(got, b"yawawots");

    let st = get_status(health_addr).await;
    assert_eq!(st.peers.len(), 1);
    assert!(st.counters.tcp_flows_total >= 2, "{:?}", st.counters);

    // removing the peer closes its route
    peers_tx.send(Vec::new()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(dialer.dial(dst).await.is_err());
    assert!(get_status(health_addr).await.peers.is_empty());
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), srv).await;
}

async fn get_status(addr: SocketAddr) -> proto::status::StowawayStatus {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("stowaway-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.yaml");
    let key = proto::keys::Key([1; 32]).to_base64();
    std::fs::write(&p, format!("private_key: {key}\npeerz: []\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowaway"))
        .arg("--config")
        .arg(&p)
        .env_remove(proto::ENV_STOWAWAY_NAMESPACE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("peerz"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
