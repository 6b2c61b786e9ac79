//! Shared by carrier's integration tests: running the real binary, capturing
//! its log, small servers and clients on loopback.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_carrier");

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "carrier-test-{}-{}-{}",
            tag,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on `ip` (bound and released; good enough on loopback).
pub fn free_port(ip: &str) -> u16 {
    let l = StdListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).expect("bind port 0");
    l.local_addr().unwrap().port()
}

/// A running carrier process; SIGKILLed on drop if still running.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Proc {
    /// Starts `program` (the carrier binary or a link to it) with `args`, `envs`.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Self::spawn_as(program, args, envs, None)
    }

    /// [`Proc::spawn`] under another user id (the test runs as root).
    pub fn spawn_as(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        uid: Option<u32>,
    ) -> Proc {
        let dir = TempDir::new("log");
        let log = dir.path().join("stderr.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("GEFYRA_CARRIER_POD")
            .env(
                "GEFYRA_LOG",
                std::env::var("TEST_CARRIER_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(f));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("spawn carrier");
        Proc {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn carrier(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Self::spawn(Path::new(BIN), args, envs)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (at most `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `addr` accepts connections (at most `limit`).
pub async fn wait_listening(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{addr} did not start listening within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 50 ms until true (at most `limit`, else panics with `what`).
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that answers each connection with `tag`, then echoes everything it
/// reads until EOF, then closes. Returns its address and a connection counter.
pub async fn echo_server(ip: &str, tag: &'static str) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    // carrier's own backlog: a burst of 1,000 connects must not overflow the
    // backend's accept queue (SYN cookies, then resets) while it is busy.
    let l =
        carrier::forward::bind_listener(SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if s.write_all(tag.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// Connects, sends `msg`, half-closes, reads everything until EOF.
pub async fn exchange(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(out)
}

/// Links `name` in `dir` to the carrier binary (a hard link when possible, a
/// symlink otherwise) and returns its path.
pub fn link_as(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if std::fs::hard_link(BIN, &p).is_err() {
        std::os::unix::fs::symlink(BIN, &p).expect("symlink");
    }
    p
}
