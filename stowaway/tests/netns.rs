//! The packet path across real network namespaces, with the real binaries:
//!
//! ```text
//!  dev (10.77.2.2) --veth-- local (cargo-client, TUN) --veth-- cluster (stowaway, servers on 10.77.9.1)
//! ```
//! `dev` routes only the service and tunnel subnets via `local`; `local` routes
//! everything into its TUN except the /32 of stowaway's endpoint; the servers
//! listen on an address that exists only in `cluster`, so every byte that
//! reaches them went through the tunnel. No namespace has a route out of the
//! machine. Needs root. Run with
//! `cargo test --profile ci -p stowaway -p cargo-client --test netns`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);
const DNS_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 77);
const DEV_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
const LOCAL_DEV_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
const LOCAL_UP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const STOWAWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const CLIENT_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 2);
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;
const BIG: u64 = 256 << 20;

fn stowaway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stowaway"))
}

fn cargo_client_bin() -> PathBuf {
    let p = stowaway_bin().with_file_name("cargo-client");
    assert!(
        p.exists(),
        "{} is missing: run `cargo test -p stowaway -p cargo-client --test netns`",
        p.display()
    );
    p
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces, processes and files of one run; all removed on drop.
struct Bed {
    ns: Vec<String>,
    children: Mutex<Vec<(String, Child)>>,
    dir: PathBuf,
}

impl Bed {
    fn name(&self, role: &str) -> String {
        format!("gf{}-{role}", std::process::id())
    }

    fn new() -> Bed {
        let dir = std::env::temp_dir().join(format!("gefyra-netns-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut bed = Bed {
            ns: Vec::new(),
            children: Mutex::new(Vec::new()),
            dir,
        };
        for role in ["dev", "local", "cluster"] {
            let n = bed.name(role);
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
            run("ip", &["netns", "add", &n]);
            bed.ns.push(n.clone());
            bed.ip(role, &["link", "set", "lo", "up"]);
        }
        let (dev, local, cluster) = (bed.name("dev"), bed.name("local"), bed.name("cluster"));
        // veths created directly inside their namespaces (no name clash in the root namespace)
        run(
            "ip",
            &[
                "link", "add", "d0", "netns", &dev, "type", "veth", "peer", "name", "l0", "netns",
                &local,
            ],
        );
        run(
            "ip",
            &[
                "link", "add", "l1", "netns", &local, "type", "veth", "peer", "name", "c1",
                "netns", &cluster,
            ],
        );
        // dev: only the service and tunnel subnets, via local
        bed.ip(
            "dev",
            &["addr", "add", &format!("{DEV_IP}/24"), "dev", "d0"],
        );
        bed.ip("dev", &["link", "set", "d0", "up"]);
        bed.ip(
            "dev",
            &[
                "route",
                "add",
                "10.77.9.0/24",
                "via",
                &LOCAL_DEV_SIDE.to_string(),
            ],
        );
        bed.ip(
            "dev",
            &[
                "route",
                "add",
                "192.168.99.0/24",
                "via",
                &LOCAL_DEV_SIDE.to_string(),
            ],
        );
        // local: the dev network, and only a /32 to stowaway's endpoint
        bed.ip(
            "local",
            &["addr", "add", &format!("{LOCAL_DEV_SIDE}/24"), "dev", "l0"],
        );
        bed.ip("local", &["link", "set", "l0", "up"]);
        bed.ip(
            "local",
            &["addr", "add", &format!("{LOCAL_UP}/32"), "dev", "l1"],
        );
        bed.ip("local", &["link", "set", "l1", "up"]);
        bed.ip(
            "local",
            &["route", "add", &format!("{STOWAWAY_IP}/32"), "dev", "l1"],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &local,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ],
        );
        // cluster: stowaway's address, the service address on lo, a /32 back to local
        bed.ip(
            "cluster",
            &["addr", "add", &format!("{STOWAWAY_IP}/32"), "dev", "c1"],
        );
        bed.ip("cluster", &["link", "set", "c1", "up"]);
        bed.ip(
            "cluster",
            &["route", "add", &format!("{LOCAL_UP}/32"), "dev", "c1"],
        );
        bed.ip(
            "cluster",
            &["addr", "add", &format!("{SERVICE_IP}/32"), "dev", "lo"],
        );
        let _ = cluster;
        bed
    }

    fn ip(&self, role: &str, args: &[&str]) {
        let n = self.name(role);
        let mut a = vec!["-n", n.as_str()];
        a.extend_from_slice(args);
        run("ip", &a);
    }

    /// Starts `bin args` inside namespace `role`; stderr goes to `<dir>/<label>.log`.
    fn spawn(
        &self,
        role: &str,
        label: &str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> u32 {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{label}.log")))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name(role)])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn child");
        let pid = child.id();
        self.children
            .lock()
            .unwrap()
            .push((label.to_string(), child));
        pid
    }

    fn kill(&self, label: &str) {
        let mut ch = self.children.lock().unwrap();
        for (l, c) in ch.iter_mut() {
            if l == label {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        ch.retain(|(l, _)| l != label);
    }

    fn alive(&self, label: &str) -> bool {
        let mut ch = self.children.lock().unwrap();
        ch.iter_mut()
            .any(|(l, c)| l == label && matches!(c.try_wait(), Ok(None)))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let t = fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = t.lines().rev().take(40).collect();
                    s += &format!("---- {} (tail)\n", e.path().display());
                    for l in tail.into_iter().rev() {
                        s += l;
                        s += "\n";
                    }
                }
            }
        }
        s
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Ok(mut ch) = self.children.lock() {
            for (_, c) in ch.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread that has entered namespace `ns` (only that thread moves).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let fd = fs::File::open(&path).expect("open netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

// ------------------------------------------------------------------ data

/// Deterministic test bytes: the byte at offset `o`.
fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let o = offset + i as u64;
        *b = (o.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (o >> 12) as u8;
    }
}

/// FNV-1a over a stream.
#[derive(Clone, Copy)]
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn expected_hash(len: u64) -> u64 {
    let mut h = Fnv::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill(&mut buf[..n], off);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.0
}

/// TCP server: `U<len>` = client uploads len bytes, server answers their hash;
/// `D<len>` = server sends len test bytes. Records the peers' addresses.
fn tcp_server(listener: TcpListener, seen: Arc<Mutex<Vec<SocketAddr>>>) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        if let Ok(p) = s.peer_addr() {
            seen.lock().unwrap().push(p);
        }
        thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
            let mut hdr = [0u8; 9];
            if s.read_exact(&mut hdr).is_err() {
                return;
            }
            let len = u64::from_be_bytes(hdr[1..9].try_into().unwrap());
            let mut buf = vec![0u8; 256 * 1024];
            match hdr[0] {
                b'U' => {
                    let mut h = Fnv::new();
                    let mut got = 0u64;
                    while got < len {
                        let want = ((len - got) as usize).min(buf.len());
                        match s.read(&mut buf[..want]) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                h.update(&buf[..n]);
                                got += n as u64;
                            }
                        }
                    }
                    let _ = s.write_all(&h.0.to_be_bytes());
                }
                b'D' => {
                    let mut off = 0u64;
                    while off < len {
                        let n = ((len - off) as usize).min(buf.len());
                        fill(&mut buf[..n], off);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        off += n as u64;
                    }
                }
                _ => {}
            }
        });
    }
}

fn connect(timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(
        &SocketAddr::V4(SocketAddrV4::new(SERVICE_IP, TCP_PORT)),
        timeout,
    )?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Uploads `len` test bytes; returns (server's hash == ours, seconds).
fn upload(len: u64, timeout: Duration) -> std::io::Result<(bool, f64)> {
    let t = Instant::now();
    let mut s = connect(timeout)?;
    let mut hdr = [b'U'; 9];
    hdr[1..].copy_from_slice(&len.to_be_bytes());
    s.write_all(&hdr)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut h = Fnv::new();
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill(&mut buf[..n], off);
        h.update(&buf[..n]);
        s.write_all(&buf[..n])?;
        off += n as u64;
    }
    let mut back = [0u8; 8];
    s.read_exact(&mut back)?;
    Ok((u64::from_be_bytes(back) == h.0, t.elapsed().as_secs_f64()))
}

/// Downloads `len` test bytes; returns (hash matches, seconds).
fn download(len: u64, expect: u64, timeout: Duration) -> std::io::Result<(bool, f64)> {
    let t = Instant::now();
    let mut s = connect(timeout)?;
    let mut hdr = [b'D'; 9];
    hdr[1..].copy_from_slice(&len.to_be_bytes());
    s.write_all(&hdr)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut h = Fnv::new();
    let mut got = 0u64;
    while got < len {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short download",
            ));
        }
        h.update(&buf[..n]);
        got += n as u64;
    }
    Ok((h.0 == expect, t.elapsed().as_secs_f64()))
}

fn udp_echo(sock: UdpSocket) {
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(&buf[..n], from);
    }
}

fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// First A record of a DNS answer.
fn dns_first_a(resp: &[u8]) -> Option<Ipv4Addr> {
    if resp.len() < 12 {
        return None;
    }
    let an = u16::from_be_bytes([resp[6], resp[7]]);
    let mut i = 12;
    // skip the question
    while *resp.get(i)? != 0 {
        i += usize::from(resp[i]) + 1;
    }
    i += 5;
    for _ in 0..an {
        // name: pointer or labels
        if resp.get(i)? & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while *resp.get(i)? != 0 {
                i += usize::from(resp[i]) + 1;
            }
            i += 1;
        }
        let ty = u16::from_be_bytes([*resp.get(i)?, *resp.get(i + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*resp.get(i + 8)?, *resp.get(i + 9)?]));
        let data = resp.get(i + 10..i + 10 + rdlen)?;
        if ty == 1 && rdlen == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + rdlen;
    }
    None
}

/// ICMP echo from the current namespace to `dst`; true if answered within `timeout`.
fn ping(dst: Ipv4Addr, timeout: Duration) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let Ok(raw) = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) else {
        return false;
    };
    // a raw socket reads and writes like a datagram socket
    let s: UdpSocket = raw.into();
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let id: u16 = (std::process::id() & 0xffff) as u16;
    let mut req = [0u8; 16];
    req[0] = 8;
    req[4..6].copy_from_slice(&id.to_be_bytes());
    req[6..8].copy_from_slice(&1u16.to_be_bytes());
    req[8..16].copy_from_slice(b"gefyra!!");
    let mut sum: u32 = req
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    req[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let _ = s.send_to(&req, (dst, 0));
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            let mut b = [0u8; 1500];
            let Ok((n, _)) = s.recv_from(&mut b) else {
                continue;
            };
            // IP header + ICMP echo reply with our id, from dst
            if n >= 28 {
                let ihl = usize::from(b[0] & 0xf) * 4;
                if n >= ihl + 8
                    && b[ihl] == 0
                    && b[ihl + 4..ihl + 6] == id.to_be_bytes()
                    && b[12..16] == dst.octets()
                {
                    return true;
                }
            }
        }
    }
    false
}

fn http_get(ns: &str, path: &'static str) -> Option<String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 8090)),
            Duration::from_secs(2),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    })
    .join()
    .ok()
    .flatten()
}

fn status(bed: &Bed) -> Option<proto::status::StowawayStatus> {
    serde_json::from_str(&http_get(&bed.name("cluster"), "/status")?).ok()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return t.elapsed();
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

#[test]
fn tunnel_across_namespaces() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces)"
    );
    let bed = Bed::new();
    let cluster = bed.name("cluster");
    let dev = bed.name("dev");

    // servers in "cluster", on an address only "cluster" has
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let r2 = ready.clone();
    let _srv = in_ns(&cluster, move || {
        let l = TcpListener::bind((SERVICE_IP, TCP_PORT)).expect("bind tcp");
        let u = UdpSocket::bind((SERVICE_IP, UDP_PORT)).expect("bind udp");
        thread::spawn(move || udp_echo(u));
        r2.store(true, Ordering::SeqCst);
        tcp_server(l, seen2);
    });
    wait_for("servers", 5, || ready.load(Ordering::SeqCst));
    bed.spawn(
        "cluster",
        "dnsmasq",
        Path::new("dnsmasq"),
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={SERVICE_IP}"),
            "--port=53",
            &format!("--address=/test.gefyra.local/{DNS_ANSWER}"),
            "--log-facility=-",
            &format!("--pid-file={}", bed.dir.join("dnsmasq.pid").display()),
        ],
        &[],
    );

    // keys and configs
    let server_priv: [u8; 32] = std::array::from_fn(|i| {
        (i as u8)
            .wrapping_mul(7)
            .wrapping_add(std::process::id() as u8)
    });
    let client_priv: [u8; 32] =
        std::array::from_fn(|i| (i as u8).wrapping_mul(13).wrapping_add(99));
    let key = |k: [u8; 32]| proto::keys::Key(k).to_base64();
    let server_pub = tunnel::wg::public_key_of(server_priv);
    let client_pub = tunnel::wg::public_key_of(client_priv);
    let stowaway_cfg = bed.dir.join("stowaway.json");
    fs::write(
        &stowaway_cfg,
        serde_json::json!({
            "private_key": key(server_priv),
            "listen": "0.0.0.0:51820",
            "health_listen": "127.0.0.1:8090",
            "dns_upstream": format!("{SERVICE_IP}:53"),
            "pod_ip": STOWAWAY_IP.to_string(),
            "peers": [{
                "name": "dev",
                "public_key": key(client_pub),
                "tunnel_ip": CLIENT_TUNNEL_IP.to_string(),
                "subnet": "10.77.2.0/24",
            }],
        })
        .to_string(),
    )
    .unwrap();
    let cargo_cfg = bed.dir.join("cargo.yaml");
    fs::write(
        &cargo_cfg,
        format!(
            "private_key: {}\npeer_public_key: {}\nendpoint: \"{STOWAWAY_IP}:51820\"\ntunnel_ip: {CLIENT_TUNNEL_IP}\ntun_name: gf0\nmtu: 1420\nkeepalive_secs: 10\n",
            key(client_priv),
            key(server_pub)
        ),
    )
    .unwrap();
    let status_file = bed.dir.join("cargo-status.json");
    let cfg_arg = stowaway_cfg.display().to_string();
    let log_env = [("GEFYRA_LOG", "info")];
    bed.spawn(
        "cluster",
        "stowaway",
        &stowaway_bin(),
        &["--config", &cfg_arg],
        &log_env,
    );
    wait_for("stowaway /healthz", 10, || {
        http_get(&cluster, "/healthz").as_deref() == Some("ok")
    });
    let ccfg = cargo_cfg.display().to_string();
    let sfile = status_file.display().to_string();
    bed.spawn(
        "local",
        "cargo-client",
        &cargo_client_bin(),
        &["--config", &ccfg, "--status-file", &sfile],
        &log_env,
    );
    // cargo-client status: fresh once the handshake is done
    let cc = cargo_client_bin();
    wait_for("cargo-client status = connected", 15, || {
        Command::new(&cc)
            .args(["status", "-o", "json", "--status-file", &sfile])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    assert!(bed.alive("cargo-client"), "cargo-client exited");

    // 256 MiB each way
    let expect_big = expected_hash(BIG);
    let (up, down) = in_ns(&dev, move || {
        let up = upload(BIG, Duration::from_secs(5));
        let down = download(BIG, expect_big, Duration::from_secs(5));
        (up, down)
    })
    .join()
    .unwrap();
    let (ok, secs) = up.expect("upload through the tunnel");
    assert!(ok, "upload checksum mismatch");
    eprintln!("upload 256 MiB: {:.2} s = {:.0} MiB/s", secs, 256.0 / secs);
    let (ok, secs) = down.expect("download through the tunnel");
    assert!(ok, "download checksum mismatch");
    eprintln!(
        "download 256 MiB: {:.2} s = {:.0} MiB/s",
        secs,
        256.0 / secs
    );

    // 4 concurrent streams, both directions, all finish
    const PAR: u64 = 32 << 20;
    let expect_par = expected_hash(PAR);
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            in_ns(&dev, move || {
                if i % 2 == 0 {
                    upload(PAR, Duration::from_secs(5)).map(|r| r.0)
                } else {
                    download(PAR, expect_par, Duration::from_secs(5)).map(|r| r.0)
                }
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert!(matches!(r, Ok(true)), "stream {i}: {r:?}");
    }
    eprintln!("4 streams x 32 MiB: {:.2} s", t.elapsed().as_secs_f64());

    // UDP echo, DNS, ping
    let (echo, dns, pinged) = in_ns(&dev, move || {
        let u = UdpSocket::bind((DEV_IP, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut echo = false;
        let mut buf = [0u8; 2048];
        for _ in 0..5 {
            let _ = u.send_to(b"gefyra-udp-echo", (SERVICE_IP, UDP_PORT));
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                echo = &buf[..n] == b"gefyra-udp-echo"
                    && from == SocketAddr::from((SERVICE_IP, UDP_PORT));
                break;
            }
        }
        let mut dns = None;
        for i in 0..5 {
            let _ = u.send_to(
                &dns_query("test.gefyra.local", 0x4242 + i),
                (proto::STOWAWAY_TUNNEL_IP, 53),
            );
            if let Ok((n, _)) = u.recv_from(&mut buf) {
                dns = dns_first_a(&buf[..n]);
                break;
            }
        }
        let pinged = ping(SERVICE_IP, Duration::from_secs(5));
        (echo, dns, pinged)
    })
    .join()
    .unwrap();
    assert!(echo, "UDP echo through the tunnel");
    assert_eq!(dns, Some(DNS_ANSWER), "DNS via stowaway's tunnel address");
    assert!(pinged, "ping of a cluster address");

    // the bytes really went through stowaway: its counters, and the servers saw stowaway's sockets
    thread::sleep(Duration::from_millis(600)); // peer counters are published every 250 ms
    let st = status(&bed).expect("stowaway /status");
    let peer = st.peers.first().expect("one peer in status");
    assert!(
        peer.rx_bytes >= BIG + 2 * PAR,
        "stowaway received {} B",
        peer.rx_bytes
    );
    assert!(
        peer.tx_bytes >= BIG + 2 * PAR,
        "stowaway sent {} B",
        peer.tx_bytes
    );
    assert!(peer.last_handshake_secs.is_some());
    assert!(st.counters.tcp_flows_total >= 6, "{:?}", st.counters);
    assert!(
        st.counters.dns_queries >= 1 && st.counters.icmp_echo >= 1,
        "{:?}",
        st.counters
    );
    {
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 6, "server saw {} connections", seen.len());
        assert!(
            seen.iter().all(|a| a.ip() != std::net::IpAddr::V4(DEV_IP)),
            "a connection bypassed the tunnel: {seen:?}"
        );
    }

    // bad input: garbage to the WireGuard port gets no answer and is counted
    let bad_before = st.counters.bad_packets;
    let answered = in_ns(&bed.name("local"), move || {
        let u = UdpSocket::bind((LOCAL_UP, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for n in [0usize, 1, 4, 32, 148, 1000] {
            let mut junk = vec![0x5au8; n];
            if n >= 4 {
                junk[0] = 1; // looks like an initiation
            }
            let _ = u.send_to(&junk, (STOWAWAY_IP, 51820));
        }
        let mut buf = [0u8; 2048];
        u.recv_from(&mut buf).is_ok()
    })
    .join()
    .unwrap();
    assert!(!answered, "stowaway answered garbage");
    let st = status(&bed).expect("stowaway /status");
    assert!(
        st.counters.bad_packets >= bad_before + 5,
        "bad packets counted: {:?}",
        st.counters
    );

    // restart stowaway (same key): the path recovers without touching cargo-client
    bed.kill("stowaway");
    thread::sleep(Duration::from_millis(500));
    bed.spawn(
        "cluster",
        "stowaway",
        &stowaway_bin(),
        &["--config", &cfg_arg],
        &log_env,
    );
    let t = Instant::now();
    let recovered = in_ns(&dev, move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok((true, _)) = upload(1 << 20, Duration::from_secs(2)) {
                if let Ok((true, _)) =
                    download(1 << 20, expected_hash(1 << 20), Duration::from_secs(2))
                {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(250));
        }
        false
    })
    .join()
    .unwrap();
    assert!(
        recovered,
        "no transfer within 30 s after stowaway restarted"
    );
    eprintln!(
        "recovered {:.1} s after the restart",
        t.elapsed().as_secs_f64()
    );
    assert!(bed.alive("cargo-client"), "cargo-client must keep running");
    // (peer counters are published every 250 ms)
    wait_for("the restarted stowaway's counters", 5, || {
        status(&bed).is_some_and(|st| st.peers.first().is_some_and(|p| p.rx_bytes >= 1 << 20))
    });
}
