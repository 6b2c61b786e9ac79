//! The real stowaway binary (standalone mode, a config file with `bridges`
//! and `pod_ip`) driving a real carrier in pod mode on loopback. No WireGuard
//! peer is connected, so traffic cannot reach a local container: the test
//! checks the control plane (carrier configured, routes open, as stowaway's
//! `/status` reports them), the route ports' source filter, and recovery after
//! restarts of either side.
//!
//! The stowaway binary is looked up next to carrier's (build it first:
//! `cargo build --profile ci -p stowaway`); without it the test says so and
//! passes, unless GEFYRA_REQUIRE_STOWAWAY=1.

mod common;

use common::*;
use proto::status::StowawayStatus;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const POD_IP: &str = "127.0.0.2";
const RECOVERY: Duration = Duration::from_secs(30);

fn stowaway_bin() -> Option<PathBuf> {
    let p = std::path::Path::new(BIN).parent()?.join("stowaway");
    p.exists().then_some(p)
}

async fn status(health: SocketAddr) -> Option<StowawayStatus> {
    let mut s = TcpStream::connect(health).await.ok()?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

async fn configured(health: SocketAddr) -> bool {
    match status(health).await {
        Some(s) => {
            s.bridges.len() == 1
                && s.bridges[0].routes_open
                && s.bridges[0].carriers.len() == 1
                && s.bridges[0].carriers[0].configured
        }
        None => false,
    }
}

fn start_stowaway(
    bin: &std::path::Path,
    dir: &TempDir,
    config: &serde_json::Value,
    control_port: u16,
) -> Proc {
    let path = dir.path().join("stowaway.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let cp = control_port.to_string();
    Proc::spawn(
        bin,
        &["--config", path.to_str().unwrap()],
        &[
            (proto::ENV_CARRIER_CONTROL_PORT, cp.as_str()),
            ("GEFYRA_NAMESPACE", ""),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_stowaway_binary_configures_carrier_and_recovers() {
    let Some(bin) = stowaway_bin() else {
        assert!(
            std::env::var("GEFYRA_REQUIRE_STOWAWAY").as_deref() != Ok("1"),
            "stowaway binary not found next to {BIN}"
        );
        eprintln!(
            "skipped: no stowaway binary next to {BIN} (cargo build --profile ci -p stowaway)"
        );
        return;
    };
    let dir = TempDir::new("real");
    let (remote, route_port) = (free_port(POD_IP), free_port("127.0.0.1"));
    let (cp, health_port, wg_port) = (
        free_port(POD_IP),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let health: SocketAddr = format!("127.0.0.1:{health_port}").parse().unwrap();
    let config = serde_json::json!({
        "private_key": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        "listen": format!("127.0.0.1:{wg_port}"),
        "health_listen": health.to_string(),
        "dns_upstream": "127.0.0.1:53",
        "pod_ip": "127.0.0.1",
        "bridges": [{
            "name": "app",
            "connection": "default",
            "namespace": "default",
            "container": "app",
            "pods": [{"name": "app-0", "ip": POD_IP}],
            "ports": [{"remote": remote, "local": 8155, "route_port": route_port}],
            "local_ip": "172.30.0.5",
            "http_probe_ports": [remote]
        }]
    });
    let control = format!("{POD_IP}:{cp}");
    let carrier_env = [
        ("GEFYRA_CARRIER_CONTROL_ADDR", control.as_str()),
        ("GEFYRA_CARRIER_BIND_IP", POD_IP),
    ];

    let mut carrier = Proc::carrier(&["pod"], &carrier_env);
    let mut stowaway = start_stowaway(&bin, &dir, &config, cp);
    wait_until(RECOVERY, "stowaway reports the carrier configured", || {
        configured(health)
    })
    .await;
    let pod_port = SocketAddr::new(POD_IP.parse().unwrap(), remote);

    // kube-probe is answered by carrier even though no laptop is connected.
    let reply = exchange(
        pod_port,
        b"GET /ready HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.20\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // Other traffic goes to stowaway, which has no peer for 172.30.0.5: closed.
    let got = exchange(pod_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        matches!(&got, Ok(b) if b.is_empty()) || got.is_err(),
        "{got:?}"
    );

    // The route port refuses a source that is not the bridged Pod.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    if let Ok(mut s) = sock
        .connect(SocketAddr::from(([127, 0, 0, 1], route_port)))
        .await
    {
        let mut b = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut b)).await;
        assert!(r.is_ok() && b.is_empty());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        stowaway.log().contains("not a bridged Pod"),
        "{}",
        stowaway.log()
    );

    // Carrier restarts: stowaway re-dials and reconfigures it.
    carrier.kill();
    wait_until(
        Duration::from_secs(15),
        "stowaway notices the carrier is gone",
        || async { !configured(health).await },
    )
    .await;
    let _carrier = Proc::carrier(&["pod"], &carrier_env);
    wait_until(
        RECOVERY,
        "carrier configured again after its restart",
        || configured(health),
    )
    .await;
    wait_listening(pod_port, Duration::from_secs(5)).await;

    // Stowaway restarts: the new process configures the running carrier.
    stowaway.kill();
    let _stowaway = start_stowaway(&bin, &dir, &config, cp);
    wait_until(
        RECOVERY,
        "configured again after the stowaway restart",
        || configured(health),
    )
    .await;
    let reply = exchange(
        pod_port,
        b"GET / HTTP/1.1\r\nUser-Agent: kube-probe/1.20\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200 OK"));
}
