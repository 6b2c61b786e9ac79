//! `carrier forward` as a user runs it: the real binary, real sockets on loopback.

mod common;

use common::*;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UP: Duration = Duration::from_secs(20);

/// Starts `carrier forward` with `pairs` of (listen, to) and extra flags.
async fn forwarder(pairs: &[(SocketAddr, String)], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["forward".into()];
    for (l, t) in pairs {
        args.push("--listen".into());
        args.push(l.to_string());
        args.push("--to".into());
        args.push(t.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let p = Proc::carrier(&argv, &[]);
    // Ready when every listener is logged (a probe connection would reach the backends).
    wait_until(UP, "carrier logs its listeners", || {
        let log = p.log();
        async move {
            pairs
                .iter()
                .all(|(l, _)| log.contains(&format!("listen={l} ")))
        }
    })
    .await;
    p
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_mappings_at_once_ipv4_and_ipv6() {
    let (a, _) = echo_server("127.0.0.1", "A:").await;
    let (b, _) = echo_server("127.0.0.1", "B:").await;
    let (la, lb) = (lo(free_port("127.0.0.1")), lo(free_port("127.0.0.1")));
    let mut pairs = vec![(la, a.to_string()), (lb, format!("localhost:{}", b.port()))];
    let v6 = ipv6_loopback();
    let mut c_addr = None;
    if v6 {
        let (c, _) = echo_server("::1", "C:").await;
        let lc: SocketAddr = format!("[::1]:{}", free_port("::1")).parse().unwrap();
        pairs.push((lc, format!("[::1]:{}", c.port())));
        c_addr = Some(lc);
    }
    // One more mapping given with --map, to the same backend as the first.
    let ld = lo(free_port("127.0.0.1"));
    let map = format!("{ld}={a}");
    let _p = forwarder(&pairs, &["--map", &map]).await;

    assert_eq!(exchange(la, b"one").await.unwrap(), b"A:one");
    // The name is resolved by carrier (hickory, /etc/hosts) per connection.
    assert_eq!(exchange(lb, b"two").await.unwrap(), b"B:two");
    assert_eq!(exchange(ld, b"four").await.unwrap(), b"A:four");
    if let Some(lc) = c_addr {
        assert_eq!(exchange(lc, b"three").await.unwrap(), b"C:three");
    } else {
        eprintln!("no IPv6 loopback here: IPv6 mapping not exercised");
    }
}

/// Deterministic data: a fixed random block whose first 8 bytes carry the
/// block number, so no two blocks are equal.
fn block(seed: u64, i: u64, buf: &mut [u8]) {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    buf[..8].copy_from_slice(&i.to_le_bytes());
}

const GIB: u64 = 1 << 30;
const BLOCK: usize = 1 << 20;

/// Writes `total` bytes of [`block`] data and returns their SHA-256.
async fn send_data(w: &mut (impl AsyncWriteExt + Unpin), seed: u64, total: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    block(seed, 0, &mut buf);
    for i in 0..total / BLOCK as u64 {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        h.update(&buf);
        w.write_all(&buf).await.expect("send");
    }
    w.shutdown().await.expect("shutdown");
    h.finalize().into()
}

/// Reads until EOF and returns (bytes, SHA-256).
async fn recv_data(r: &mut (impl AsyncReadExt + Unpin)) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf).await.expect("recv");
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    (n_total, h.finalize().into())
}

async fn gib_each_way(extra: &[&str]) -> Duration {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = server.local_addr().unwrap();
    let listen = lo(free_port("127.0.0.1"));
    let mut p = forwarder(&[(listen, target.to_string())], extra).await;

    let srv = tokio::spawn(async move {
        let (s, _) = server.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let recv = tokio::spawn(async move { recv_data(&mut r).await });
        let sent = send_data(&mut w, 2, GIB).await;
        (sent, recv.await.unwrap())
    });
    let start = Instant::now();
    let c = TcpStream::connect(listen).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let recv = tokio::spawn(async move { recv_data(&mut r).await });
    let sent_up = send_data(&mut w, 1, GIB).await;
    let (n_down, got_down) = recv.await.unwrap();
    let (sent_down, (n_up, got_up)) = srv.await.unwrap();
    let took = start.elapsed();
    assert_eq!(n_up, GIB, "bytes client -> server");
    assert_eq!(n_down, GIB, "bytes server -> client");
    assert_eq!(got_up, sent_up, "checksum client -> server");
    assert_eq!(got_down, sent_down, "checksum server -> client");
    assert!(p.alive());
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_splice() {
    let took = gib_each_way(&[]).await;
    eprintln!("splice: 1 GiB each way (concurrently) in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_buffered() {
    let took = gib_each_way(&["--no-splice"]).await;
    eprintln!("buffered: 1 GiB each way (concurrently) in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_short_connections() {
    // This process holds 2,000 sockets (clients and backend): lift a low soft limit.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < 4096 && hard > soft {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
        }
    }
    let (backend, count) = echo_server("127.0.0.1", "").await;
    let listen = lo(free_port("127.0.0.1"));
    let mut p = forwarder(&[(listen, backend.to_string())], &[]).await;
    let start = Instant::now();
    // All 1,000 are opened before any is closed: they are open at once.
    let mut conns = Vec::with_capacity(1000);
    for _ in 0..1000 {
        conns.push(TcpStream::connect(listen).await.expect("connect"));
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let msg = format!("request {i}");
            s.write_all(msg.as_bytes()).await?;
            s.shutdown().await?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            Ok::<bool, std::io::Error>(out == msg.as_bytes())
        }));
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok(true)) => ok += 1,
            Ok(Ok(false)) => failures.push(format!("#{i}: wrong answer")),
            Ok(Err(e)) => failures.push(format!("#{i}: {e}")),
            Err(e) => failures.push(format!("#{i}: task {e}")),
        }
    }
    if !failures.is_empty() {
        eprintln!(
            "{} failed, first ones: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        eprintln!(
            "carrier log:\n{}",
            p.log()
                .lines()
                .filter(|l| l.contains("error"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    eprintln!(
        "1,000 concurrent connections answered in {:?}",
        start.elapsed()
    );
    assert_eq!(ok, 1000, "connections answered correctly");
    assert_eq!(count.load(Ordering::SeqCst), 1000);
    assert!(p.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_closes_client_cleanly_with_one_log_line() {
    let dead = lo(free_port("127.0.0.1")); // nothing listens there
    let (live, _) = echo_server("127.0.0.1", "live:").await;
    let (l1, l2) = (lo(free_port("127.0.0.1")), lo(free_port("127.0.0.1")));
    let mut p = forwarder(&[(l1, dead.to_string()), (l2, live.to_string())], &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = p.log().lines().count();

    let mut s = TcpStream::connect(l1).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the client connection is closed, not left hanging")
        .expect("a clean close (EOF), not a reset");
    assert_eq!(n, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = p.log();
    let new: Vec<&str> = log.lines().skip(before).collect();
    assert_eq!(new.len(), 1, "exactly one log line, got {new:#?}");
    assert!(new[0].contains("upstream unreachable"), "{}", new[0]);
    assert!(new[0].contains(&dead.to_string()), "{}", new[0]);

    // carrier is still up and serves the other mapping.
    assert!(p.alive());
    assert_eq!(exchange(l2, b"x").await.unwrap(), b"live:x");
}

/// A backend that sends `greeting`, half-closes, and then reads what the
/// client still sends after that, returning it.
async fn greet_then_read(
    greeting: &'static [u8],
) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(greeting).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    (addr, h)
}

async fn half_close_both_ways(extra: &[&str]) {
    // client -> server half-close first: the reply still arrives.
    let (echo, _) = echo_server("127.0.0.1", "").await;
    let l1 = lo(free_port("127.0.0.1"));
    let (greeter, got) = greet_then_read(b"hello, then FIN").await;
    let l2 = lo(free_port("127.0.0.1"));
    let _p = forwarder(&[(l1, echo.to_string()), (l2, greeter.to_string())], extra).await;

    let mut s = TcpStream::connect(l1).await.unwrap();
    s.write_all(b"request body").await.unwrap();
    s.shutdown().await.unwrap(); // FIN to the server through carrier
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"request body");

    // server -> client half-close first: the client can still send.
    let mut s = TcpStream::connect(l2).await.unwrap();
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting).await.unwrap(); // EOF: the server's FIN arrived
    assert_eq!(greeting, b"hello, then FIN");
    s.write_all(b"late data after the server's FIN")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(got.await.unwrap(), b"late data after the server's FIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways_splice() {
    half_close_both_ways(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways_buffered() {
    half_close_both_ways(&["--no-splice"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_style_invocations_while_a_carrier_runs() {
    let (echo, _) = echo_server("127.0.0.1", "").await;
    let listen = lo(free_port("127.0.0.1"));
    let mut p = forwarder(&[(listen, echo.to_string())], &[]).await;

    let dir = TempDir::new("exec");
    let env = link_as(dir.path(), "env");
    let out = Command::new(&env)
        .env("GEFYRA_TEST_MARKER", "bridged=yes")
        .env_remove("GEFYRA_CARRIER_POD")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l == "GEFYRA_TEST_MARKER=bridged=yes"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("PATH=")), "{stdout}");

    for name in ["sh", "python3"] {
        let sh = link_as(dir.path(), name);
        let out = Command::new(&sh)
            .args(["-c", "echo hi"])
            .env_remove("GEFYRA_CARRIER_POD")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bridged by gefyra"), "{err}");
    }

    // The running carrier was not disturbed and no second proxy started.
    assert!(p.alive());
    assert_eq!(
        exchange(listen, b"still here").await.unwrap(),
        b"still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_unbindable_mapping_exit_64() {
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("GEFYRA_CARRIER_POD")
            .output()
            .unwrap()
    };
    for args in [
        &["forward", "--listen", "nope", "--to", "127.0.0.1:1"][..],
        &["forward", "--listen", "127.0.0.1:1"][..],
        &["forward", "--listen", "127.0.0.1:0", "--to", "::1:80"][..],
        &["forward", "--map", "127.0.0.1:0"][..],
        &["forward"][..],
        &[
            "forward",
            "--grace",
            "soon",
            "--map",
            "127.0.0.1:0=127.0.0.1:1",
        ][..],
        &["frobnicate"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?}: no message");
    }
    // A port that is taken: one clear error naming the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = run(&[
        "forward",
        "--listen",
        &addr.to_string(),
        "--to",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr.to_string()) && err.contains("in use"),
        "{err}"
    );
    // Help is not an error.
    let out = run(&["forward", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--map"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_within_grace() {
    let (echo, _) = echo_server("127.0.0.1", "").await;
    let listen = lo(free_port("127.0.0.1"));
    let mut p = forwarder(&[(listen, echo.to_string())], &["--grace", "20"]).await;

    // An open connection, mid-exchange.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();
    p.signal(Signal::SIGTERM);
    // New connections are refused soon after.
    wait_until(Duration::from_secs(10), "the listener closes", || async {
        TcpStream::connect(listen).await.is_err()
    })
    .await;
    assert!(p.alive(), "carrier waits for the open connection");
    // The open connection still works and ends normally.
    s.write_all(b"after").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"after");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("carrier exits once drained");
    assert_eq!(status.code(), Some(0));

    // With a short grace, a connection that never ends is cut.
    let mut p = forwarder(&[(listen, echo.to_string())], &["--grace", "1"]).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    let t = Instant::now();
    p.signal(Signal::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("carrier exits after the grace");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(p.log().contains("grace time over"), "{}", p.log());
}
