//! In-Pod mode driven by stowaway's real bridge code (stowaway/src/bridge.rs,
//! compiled into this test with a loopback `Dial` instead of the WireGuard
//! tunnel) against the real carrier binary. Loopback plays the cluster:
//! 127.0.0.2 is the bridged Pod (carrier's control port and container ports),
//! 127.0.0.1 is stowaway's Pod IP (route ports) and the local container.

mod common;

#[allow(dead_code, unused_imports)]
#[path = "../../stowaway/src/bridge.rs"]
mod bridge;

use bridge::{BoxStream, Dial, DialFuture, Options};
use common::*;
use proto::carrier::{CarrierReply, PortForward, StowawayMessage, PROTOCOL_VERSION};
use proto::cluster::{BridgePort, BridgeSpec, BridgedPod};
use proto::status::BridgeStatus;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};

const POD_IP: &str = "127.0.0.2";
const STOWAWAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const RECOVERY: Duration = Duration::from_secs(30);

/// Stands in for the tunnel: a plain TCP connection on loopback.
#[derive(Clone)]
struct Loopback;

impl Dial for Loopback {
    fn dial(&self, dst: SocketAddrV4) -> DialFuture {
        Box::pin(async move {
            let s = TcpStream::connect(dst).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}

/// stowaway's bridge side running in this process.
struct Stowaway {
    bridges_tx: watch::Sender<Vec<BridgeSpec>>,
    status_rx: watch::Receiver<Vec<BridgeStatus>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stowaway {
    fn start(specs: Vec<BridgeSpec>, control_port: u16) -> Stowaway {
        Self::start_on(specs, control_port, STOWAWAY_IP)
    }

    /// With `ip` as stowaway's Pod IP (where carriers reach the route ports).
    fn start_on(specs: Vec<BridgeSpec>, control_port: u16, ip: Ipv4Addr) -> Stowaway {
        let (bridges_tx, bridges_rx) = watch::channel(specs);
        let (status_tx, status_rx) = watch::channel(Vec::new());
        let (stop, stop_rx) = oneshot::channel::<()>();
        let opts = Options {
            control_port,
            route_bind: ip,
            ping_interval: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
        };
        let task = tokio::spawn(bridge::run_with(
            bridges_rx,
            ip,
            Loopback,
            status_tx,
            async {
                let _ = stop_rx.await;
            },
            opts,
        ));
        Stowaway {
            bridges_tx,
            status_rx,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    fn ready(&self) -> bool {
        let s = self.status_rx.borrow();
        !s.is_empty()
            && s.iter().all(|b| {
                b.routes_open && !b.carriers.is_empty() && b.carriers.iter().all(|c| c.configured)
            })
    }

    async fn wait_ready(&self, what: &str) {
        let start = std::time::Instant::now();
        while !self.ready() {
            assert!(
                start.elapsed() < RECOVERY,
                "{what}: not configured within {RECOVERY:?}: {:#?}",
                self.status_rx.borrow()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stowaway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod_addr(port: u16) -> SocketAddr {
    SocketAddr::new(POD_IP.parse().unwrap(), port)
}

/// Starts carrier in-Pod mode on the fake Pod IP, as `carrier pod` or, with
/// `as_name`, through a link of that name forced into in-Pod mode by env (as
/// PID 1 would be, whatever the container's command).
async fn pod_carrier(control_port: u16, as_name: Option<(&TempDir, &str)>) -> Proc {
    let control = format!("{POD_IP}:{control_port}");
    let mut envs = vec![
        ("GEFYRA_CARRIER_CONTROL_ADDR", control.as_str()),
        ("GEFYRA_CARRIER_BIND_IP", POD_IP),
    ];
    let p = match as_name {
        None => Proc::carrier(&["pod"], &envs),
        Some((dir, name)) => {
            envs.push(("GEFYRA_CARRIER_POD", "1"));
            let prog = link_as(dir.path(), name);
            Proc::spawn(&prog, &["app.py", "--port", "8000"], &envs)
        }
    };
    wait_until(
        Duration::from_secs(20),
        "carrier waits for stowaway",
        || {
            let log = p.log();
            async move { log.contains("in-Pod mode: waiting for stowaway") }
        },
    )
    .await;
    p
}

fn spec(ports: &[BridgePort], http_probe_ports: Vec<u16>) -> BridgeSpec {
    BridgeSpec {
        name: "app".into(),
        connection: "default".into(),
        namespace: "default".into(),
        container: "app".into(),
        pods: vec![BridgedPod {
            name: "app-7d9f-x2".into(),
            ip: POD_IP.parse().unwrap(),
        }],
        ports: ports.to_vec(),
        local_ip: STOWAWAY_IP, // the "local container" also lives on 127.0.0.1
        http_probe_ports,
    }
}

async fn works(addr: SocketAddr, msg: &[u8], want: &[u8]) -> bool {
    matches!(exchange(addr, msg).await, Ok(got) if got == want)
}

const PROBE: &[u8] =
    b"GET /healthz HTTP/1.1\r\nHost: 10.1.2.3:8080\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_pod_mode_with_stowaway_restarts_and_live_changes() {
    let (app1, app1_count) = echo_server("127.0.0.1", "app1:").await;
    let (app2, app2_count) = echo_server("127.0.0.1", "app2:").await;
    let (r1, r2, r3) = (free_port(POD_IP), free_port(POD_IP), free_port(POD_IP));
    let (rp1, rp2, rp3) = (
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let cp = free_port(POD_IP);
    let p1 = BridgePort {
        remote: r1,
        local: app1.port(),
        route_port: rp1,
    };
    let p2 = BridgePort {
        remote: r2,
        local: app2.port(),
        route_port: rp2,
    };
    let p3 = BridgePort {
        remote: r3,
        local: app1.port(),
        route_port: rp3,
    };

    let mut carrier = pod_carrier(cp, None).await;
    let st = Stowaway::start(vec![spec(&[p1, p2], vec![r2])], cp);
    st.wait_ready("first configuration").await;
    assert_eq!(st.status_rx.borrow()[0].route_ports, vec![rp1, rp2]);

    // Traffic to the Pod's port reaches the local container, both ways.
    assert_eq!(
        exchange(pod_addr(r1), b"hello").await.unwrap(),
        b"app1:hello"
    );

    // kube-probe on the probe port is answered by carrier; the app never sees it.
    let before = app2_count.load(Ordering::SeqCst);
    let reply = exchange(pod_addr(r2), PROBE).await.unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(app2_count.load(Ordering::SeqCst), before);
    // Any other request is forwarded byte for byte, including the peeked head.
    let req = b"POST /items/123 HTTP/1.1\r\nHost: svc\r\nUser-Agent: curl/8.5\r\nContent-Length: 4\r\n\r\nbody";
    let mut want = b"app2:".to_vec();
    want.extend_from_slice(req);
    assert_eq!(exchange(pod_addr(r2), req).await.unwrap(), want);
    // Not HTTP at all: forwarded untouched too.
    let got = exchange(pod_addr(r2), b"\x00\x01binary").await;
    assert_eq!(
        got.as_deref().ok(),
        Some(&b"app2:\x00\x01binary"[..]),
        "{got:?}\n{}",
        carrier.log()
    );

    // A route port refuses a source that is not a bridged Pod.
    let before = app1_count.load(Ordering::SeqCst);
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    // Closed at once with a reset: seen by connect itself when the reset wins
    // the race, else by the first read (EOF if the reset raced our write).
    match sock.connect(SocketAddr::new(STOWAWAY_IP.into(), rp1)).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(mut s) => {
            let _ = s.write_all(b"sneaky").await;
            let mut got = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
            assert!(r.is_ok(), "the connection is closed at once");
            assert!(got.is_empty(), "nothing served: {got:?}");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app1_count.load(Ordering::SeqCst),
        before,
        "the local container was not reached"
    );

    // Live change: R1 removed, R3 added; an open connection on R2 survives.
    let mut held = TcpStream::connect(pod_addr(r2)).await.unwrap();
    held.write_all(b"\x00held").await.unwrap();
    let mut buf = [0u8; 10];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"app2:\x00held");
    st.bridges_tx.send_replace(vec![spec(&[p2, p3], vec![r2])]);
    wait_until(RECOVERY, "R3 serves after the live change", || {
        works(pod_addr(r3), b"3", b"app1:3")
    })
    .await;
    st.wait_ready("after the live change").await;
    wait_until(Duration::from_secs(10), "R1 is closed", || async {
        TcpStream::connect(pod_addr(r1)).await.is_err()
    })
    .await;
    held.write_all(b"more").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"more");
    drop(held);

    // Carrier restarts (here: killed, then started under another name, as the
    // kubelet would restart the container with its original command).
    carrier.kill();
    wait_until(
        Duration::from_secs(10),
        "status shows the carrier down",
        || {
            let down = !st.ready();
            async move { down }
        },
    )
    .await;
    let dir = TempDir::new("pod");
    let carrier2 = pod_carrier(cp, Some((&dir, "python3"))).await;
    wait_until(RECOVERY, "traffic after the carrier restart", || {
        works(pod_addr(r3), b"r", b"app1:r")
    })
    .await;
    st.wait_ready("after the carrier restart").await;
    assert!(carrier2
        .log()
        .contains("the container's command and args are ignored"));

    // Stowaway restarts: while it is gone the route is closed; a new instance
    // reconfigures the running carrier and traffic flows again.
    let specs = st.bridges_tx.borrow().clone();
    st.stop().await;
    wait_until(
        Duration::from_secs(10),
        "no route while stowaway is down",
        || async { !works(pod_addr(r3), b"x", b"app1:x").await },
    )
    .await;
    // The new stowaway Pod has a new IP: carrier keeps its listeners and
    // forwards the next connections there.
    let st = Stowaway::start_on(specs, cp, Ipv4Addr::new(127, 0, 0, 4));
    st.wait_ready("after the stowaway restart").await;
    wait_until(RECOVERY, "traffic after the stowaway restart", || {
        works(pod_addr(r3), b"s", b"app1:s")
    })
    .await;
    let log = carrier2.log();
    assert!(
        log.contains("port updated") && log.contains("forward=127.0.0.4:"),
        "{log}"
    );
    assert_eq!(
        exchange(pod_addr(r2), PROBE).await.unwrap().get(..15),
        Some(&b"HTTP/1.1 200 OK"[..])
    );

    // Removing the bridge closes its route listeners and links.
    st.bridges_tx.send_replace(vec![]);
    wait_until(
        Duration::from_secs(10),
        "route listeners closed",
        || async {
            TcpStream::connect(SocketAddr::new(STOWAWAY_IP.into(), rp3))
                .await
                .is_err()
        },
    )
    .await;
    assert!(st.status_rx.borrow().is_empty());
    st.stop().await;
}

/// A raw control link (what a buggy or foreign peer would send).
struct RawLink {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl RawLink {
    async fn open(control: SocketAddr) -> RawLink {
        let s = TcpStream::connect(control).await.unwrap();
        let (r, w) = s.into_split();
        RawLink {
            r: BufReader::new(r),
            w,
        }
    }
    async fn send_line(&mut self, line: &[u8]) {
        self.w.write_all(line).await.unwrap();
        self.w.write_all(b"\n").await.unwrap();
    }
    async fn send(&mut self, m: &StowawayMessage) -> Option<CarrierReply> {
        self.send_line(&serde_json::to_vec(m).unwrap()).await;
        self.reply().await
    }
    async fn reply(&mut self) -> Option<CarrierReply> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
            .await
            .expect("reply in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).expect("carrier's reply parses"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_messages_close_only_that_link() {
    let (app, _) = echo_server("127.0.0.1", "app:").await;
    let r1 = free_port(POD_IP);
    let rp1 = free_port("127.0.0.1");
    let cp = free_port(POD_IP);
    let carrier = pod_carrier(cp, None).await;
    let st = Stowaway::start(
        vec![spec(
            &[BridgePort {
                remote: r1,
                local: app.port(),
                route_port: rp1,
            }],
            vec![],
        )],
        cp,
    );
    st.wait_ready("configuration").await;

    let control = pod_addr(cp);
    let mut link = RawLink::open(control).await;
    // An unknown protocol version is refused, the link stays.
    let reply = link
        .send(&StowawayMessage::Configure {
            version: PROTOCOL_VERSION + 7,
            bridge: "x".into(),
            ports: vec![],
        })
        .await;
    assert!(
        matches!(reply, Some(CarrierReply::Error { ref reason, .. }) if reason.contains("version")),
        "{reply:?}"
    );
    assert!(matches!(
        link.send(&StowawayMessage::Ping { version: 1 }).await,
        Some(CarrierReply::Pong { .. })
    ));
    // Garbage: an error reply with the reason, then the link closes.
    let log_before = carrier.log().lines().count();
    link.send_line(b"{\"type\":\"configure\",\"ports\":\"all of them\"}")
        .await;
    let reply = link.reply().await;
    assert!(
        matches!(reply, Some(CarrierReply::Error { ref reason, .. }) if reason.contains("does not parse")),
        "{reply:?}"
    );
    assert!(link.reply().await.is_none(), "the link is closed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = carrier.log();
    let new: Vec<&str> = log.lines().skip(log_before).collect();
    assert!(
        new.iter()
            .any(|l| l.contains("closing control link") && l.contains("does not parse")),
        "{new:#?}"
    );

    // Carrier keeps serving what it had, and stowaway's own link is unaffected.
    assert!(works(pod_addr(r1), b"ok", b"app:ok").await);
    tokio::time::sleep(Duration::from_secs(2)).await; // a few pings
    assert!(st.ready());
    assert!(works(pod_addr(r1), b"ok", b"app:ok").await);
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_below_1024_as_non_root_give_a_clear_error() {
    let unpriv: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if unpriv <= 80
        || !std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
    {
        eprintln!(
            "skipped: needs root to start carrier as uid 65532 and ip_unprivileged_port_start > 80"
        );
        return;
    }
    let cp = free_port(POD_IP);
    let ok_port = free_port(POD_IP);
    let control = format!("{POD_IP}:{cp}");
    let p = Proc::spawn_as(
        std::path::Path::new(BIN),
        &["pod"],
        &[
            ("GEFYRA_CARRIER_CONTROL_ADDR", &control),
            ("GEFYRA_CARRIER_BIND_IP", POD_IP),
        ],
        Some(proto::IMAGE_UID),
    );
    wait_until(Duration::from_secs(20), "carrier up as uid 65532", || {
        let log = p.log();
        async move { log.contains("waiting for stowaway") }
    })
    .await;
    let mut link = RawLink::open(pod_addr(cp)).await;
    let fwd: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let reply = link
        .send(&StowawayMessage::Configure {
            version: PROTOCOL_VERSION,
            bridge: "web".into(),
            ports: vec![
                PortForward {
                    port: 80,
                    forward: fwd,
                    http_probe: false,
                },
                PortForward {
                    port: ok_port,
                    forward: fwd,
                    http_probe: false,
                },
            ],
        })
        .await;
    match reply {
        Some(CarrierReply::Error { reason, .. }) => {
            assert!(
                reason.contains("port 80") && reason.contains("NET_BIND_SERVICE"),
                "{reason}"
            );
            assert!(reason.contains("ip_unprivileged_port_start"), "{reason}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // The other port is served anyway.
    wait_listening(pod_addr(ok_port), Duration::from_secs(5)).await;
}
