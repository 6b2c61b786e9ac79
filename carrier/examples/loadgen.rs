//! Load generator for benches/carrier-bench.sh (loopback only).
//!
//! loadgen echo ADDR                          echo server
//! loadgen rr ADDR CONNS REQUESTS SIZE        request/response latency (p50/p99 µs)
//! loadgen cps ADDR CONCURRENCY SECS          new connections per second
//! loadgen idle ADDR CONNS SECS               hold CONNS idle connections for SECS
//! loadgen echo-ns ADDR                       echo server, private addresses allowed
//! loadgen rr-ns ADDR CONNS REQUESTS SIZE     rr with p90/p99.9/min/mean, private addresses allowed
//!
//! Results are one JSON object on stdout. Every loop is bounded in count or time.
//! The `-ns` modes are for benches/bridge-bench.sh, which runs them inside network
//! namespaces it creates: they accept loopback or private (RFC 1918) addresses only,
//! and every connect or exchange of `rr-ns` gives up after a timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("argument {i}: {what}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let addr: SocketAddr = arg(&args, 2, "ADDR");
    if mode.ends_with("-ns") {
        let private = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.is_private() || ip.is_loopback(),
            std::net::IpAddr::V6(ip) => ip.is_loopback(),
        };
        assert!(private, "loopback or private (RFC 1918) addresses only");
    } else {
        assert!(addr.ip().is_loopback(), "loopback only");
    }
    match mode {
        "echo-ns" => echo(addr).await,
        "rr-ns" => {
            rr_ns(
                addr,
                arg(&args, 3, "CONNS"),
                arg(&args, 4, "REQUESTS"),
                arg(&args, 5, "SIZE"),
            )
            .await
        }
        "echo" => echo(addr).await,
        "rr" => {
            rr(
                addr,
                arg(&args, 3, "CONNS"),
                arg(&args, 4, "REQUESTS"),
                arg(&args, 5, "SIZE"),
            )
            .await
        }
        "cps" => cps(addr, arg(&args, 3, "CONCURRENCY"), arg(&args, 4, "SECS")).await,
        "idle" => idle(addr, arg(&args, 3, "CONNS"), arg(&args, 4, "SECS")).await,
        _ => panic!("mode: echo | rr | cps | idle | echo-ns | rr-ns"),
    }
}

async fn echo(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Warm-up exchanges per connection, not counted.
const WARMUP: usize = 100;
/// A connect or one exchange that takes longer fails the run (exit status 101).
const LIMIT: Duration = Duration::from_secs(10);

/// `conns` connections each making `requests` exchanges of `size` bytes after
/// the warm-up: every exchange's latency (ns, sorted) and the seconds it all took.
async fn exchanges(
    addr: SocketAddr,
    conns: usize,
    requests: usize,
    size: usize,
) -> (Vec<u64>, f64) {
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
                .await
                .expect("connect: timed out")
                .expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let req = vec![7u8; size];
            let mut resp = vec![0u8; size];
            let mut lat = Vec::with_capacity(requests);
            for i in 0..requests + WARMUP {
                let t = Instant::now();
                tokio::time::timeout(LIMIT, async {
                    s.write_all(&req).await?;
                    s.read_exact(&mut resp).await.map(|_| ())
                })
                .await
                .expect("exchange: timed out")
                .expect("exchange");
                if i >= WARMUP {
                    lat.push(t.elapsed().as_nanos() as u64);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let took = start.elapsed().as_secs_f64();
    all.sort_unstable();
    assert!(!all.is_empty(), "no exchanges");
    (all, took)
}

/// The latency at quantile `p` of sorted `all`, in µs.
fn pct(all: &[u64], p: f64) -> f64 {
    all[((all.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

async fn rr(addr: SocketAddr, conns: usize, requests: usize, size: usize) {
    let (all, took) = exchanges(addr, conns, requests, size).await;
    println!(
        "{{\"mode\":\"rr\",\"conns\":{conns},\"size\":{size},\"exchanges\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"per_sec\":{:.0}}}",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        all.len() as f64 / took
    );
}

/// Like [`rr`], with more percentiles.
async fn rr_ns(addr: SocketAddr, conns: usize, requests: usize, size: usize) {
    let (all, took) = exchanges(addr, conns, requests, size).await;
    let mean = all.iter().sum::<u64>() as f64 / all.len() as f64 / 1000.0;
    println!(
        "{{\"mode\":\"rr-ns\",\"conns\":{conns},\"size\":{size},\"warmup\":{WARMUP},\"exchanges\":{},\"min_us\":{:.1},\"mean_us\":{mean:.1},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"per_sec\":{:.0}}}",
        all.len(),
        pct(&all, 0.0),
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99),
        pct(&all, 0.999),
        pct(&all, 1.0),
        all.len() as f64 / took
    );
}

async fn cps(addr: SocketAddr, conc: usize, secs: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let r = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Ok::<_, std::io::Error>(())
                })
                .await;
                match r {
                    Ok(Ok(())) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.expect("task");
        ok += a;
        failed += b;
    }
    println!(
        "{{\"mode\":\"cps\",\"concurrency\":{conc},\"secs\":{secs},\"ok\":{ok},\"failed\":{failed},\"per_sec\":{:.0}}}",
        ok as f64 / secs
    );
}

async fn idle(addr: SocketAddr, conns: usize, secs: f64) {
    let mut held = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("read");
        held.push(s);
    }
    println!("{{\"mode\":\"idle\",\"conns\":{}}}", held.len());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}
