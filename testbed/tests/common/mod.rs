//! Shared helpers of the smoke tests against the test bed (testbed/bed.sh).
//!
//! The bed is required (a missing bed FAILS the test) when CI=true or GEFYRA_E2E=1;
//! otherwise a missing bed skips the test with a message.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, AttachParams, DeleteParams, PostParams};
use kube::Client;
use tokio::io::AsyncReadExt;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Bed {
    pub kubeconfig: PathBuf,
    pub registry: String,
    pub node_ip: String,
}

pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("GEFYRA_E2E").is_ok_and(|v| v == "1")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bed if it is up; panics when it is required, else `None` (skip) with a message.
pub fn bed(test: &str) -> Option<Bed> {
    match find_bed() {
        Ok(b) => Some(b),
        Err(why) if required() => {
            panic!("{test}: the test bed is required (CI=true or GEFYRA_E2E=1) but {why}")
        }
        Err(why) => {
            eprintln!("{test}: SKIPPED: {why} (set GEFYRA_E2E=1 to make this a failure)");
            None
        }
    }
}

fn find_bed() -> Result<Bed, String> {
    let bed_sh = repo().join("testbed/bed.sh");
    let st = Command::new(&bed_sh)
        .arg("status")
        .output()
        .map_err(|e| format!("cannot run bed.sh: {e}"))?;
    if !st.status.success() {
        return Err(format!(
            "the bed is not up (run testbed/bed.sh up): {}",
            String::from_utf8_lossy(&st.stdout).trim()
        ));
    }
    let env = Command::new(&bed_sh)
        .arg("env")
        .output()
        .map_err(|e| format!("cannot run bed.sh env: {e}"))?;
    let env = String::from_utf8_lossy(&env.stdout).to_string();
    let get = |k: &str| {
        env.lines().find_map(|l| {
            l.trim()
                .strip_prefix("export ")
                .and_then(|l| l.strip_prefix(k))
                .and_then(|l| l.strip_prefix('='))
                .map(str::to_string)
        })
    };
    Ok(Bed {
        kubeconfig: PathBuf::from(get("KUBECONFIG").ok_or("bed.sh env printed no KUBECONFIG")?),
        registry: get("GEFYRA_REGISTRY").ok_or("bed.sh env printed no GEFYRA_REGISTRY")?,
        node_ip: get("GEFYRA_NODE_IP").ok_or("bed.sh env printed no GEFYRA_NODE_IP")?,
    })
}

impl Bed {
    pub async fn client(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .expect("read the bed's kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kubeconfig");
        Client::try_from(cfg).expect("kube client")
    }
}

/// A short random suffix for names.
pub fn suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", (n ^ u128::from(std::process::id())) & 0xff_ffff)
}

// ------------------------------------------------------------------ docker (CLI, via std::process)

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

pub fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(
        o.status.success(),
        "docker {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Removes a container when dropped (also when the test panics).
pub struct ContainerGuard(pub String);
impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Creates a Docker bridge network (interface br-*: the "developer machine" side) and
/// removes it when dropped.
pub struct NetworkGuard(pub String);
impl NetworkGuard {
    pub fn create(name: &str) -> Self {
        docker_ok(&[
            "network",
            "create",
            "--label",
            "gefyra-testbed-smoke=1",
            name,
        ]);
        NetworkGuard(name.to_string())
    }
}
impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

/// `docker run --rm` with a bounded runtime; returns (success, stdout+stderr).
pub fn docker_run<S: AsRef<str>>(
    name: &str,
    network: Option<&str>,
    image: &str,
    cmd: &[S],
) -> (bool, String) {
    let _guard = ContainerGuard(name.to_string());
    let mut args = vec!["run", "--rm", "--name", name];
    if let Some(n) = network {
        args.extend(["--network", n]);
    }
    args.push(image);
    args.extend(cmd.iter().map(|s| s.as_ref()));
    let o = docker(&args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), out)
}

/// The tools image: the bed's busybox plus the static `testbed-dns` binary (DNS queries,
/// UDP echo and UDP client), pushed to the bed's registry. Built once per test process.
pub fn tools_image(bed: &Bed) -> String {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_tools_image(bed))
        .clone()
        .unwrap_or_else(|e| panic!("building the smoke-test tools image: {e}"))
}

fn build_tools_image(bed: &Bed) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("gefyra-smoke-tools-{}", suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::copy(env!("CARGO_BIN_EXE_testbed-dns"), dir.join("testbed-dns"))
        .map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox:1.36\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY testbed-dns /bin/testbed-dns\n",
    )
    .map_err(|e| e.to_string())?;
    let image = format!("{}/gefyra-testbed-tools:{VERSION}", bed.registry);
    let o = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &image])
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    if !o.status.success() {
        return Err(format!(
            "docker build: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let o = docker(&["push", &image]);
    if !o.status.success() {
        return Err(format!(
            "docker push {image}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(image)
}

/// Whether the registry holds `name:tag` (HTTP GET of its manifest).
pub fn registry_has(bed: &Bed, name: &str, tag: &str) -> bool {
    let Ok(addr) = bed.registry.parse::<SocketAddr>() else {
        return false;
    };
    http_get(
        addr,
        &format!("/v2/{name}/manifests/{tag}"),
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    .is_ok_and(|(status, _)| status == 200)
}

/// A plain HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nUser-Agent: gefyra-smoke\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ------------------------------------------------------------------ kubernetes (kube-rs)

/// A namespace deleted (with everything in it) when dropped, also when the test panics.
pub struct Ns {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Ns {
    pub async fn create(bed: &Bed, client: &Client, prefix: &str) -> Ns {
        let name = format!("{prefix}-{}", suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"gefyra-testbed-smoke": "1"}}
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // Pods can only be created once the namespace's default ServiceAccount exists
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        let t0 = Instant::now();
        // (v1.20: and its token Secret, or Pod creation fails)
        loop {
            let sa = sa.get_opt("default").await.ok().flatten();
            if sa.is_some_and(|sa| sa.secrets.is_some_and(|s| !s.is_empty())) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no default ServiceAccount with a token in {name} after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ns {
            name,
            kubeconfig: bed.kubeconfig.clone(),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        // a fresh runtime on its own thread: Drop may run inside (or outside) the test's runtime
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let bed = Bed {
                    kubeconfig,
                    registry: String::new(),
                    node_ip: String::new(),
                };
                let client = bed.client().await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

/// Polls `f` every 500 ms until it returns Some, for at most `secs` seconds.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the Pod is Ready; returns it.
pub async fn pod_ready(pods: &Api<Pod>, name: &str, secs: u64) -> Pod {
    wait_for(&format!("Pod {name} Ready"), secs, || async {
        let p = pods.get_opt(name).await.ok().flatten()?;
        let ready = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(p)
    })
    .await
}

/// Describes a Pod that is not coming up (events and container states), for assert messages.
pub async fn pod_story(client: &Client, ns: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let state = pods
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|p| p.status)
        .map(|s| format!("{:?}", s.container_statuses))
        .unwrap_or_default();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let ev = events
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.reason.clone().unwrap_or_default(),
                        e.message.clone().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    format!("container states: {state}\nevents:\n{ev}")
}

/// Runs a command in a Pod's container; returns (exit code 0?, stdout+stderr).
pub async fn exec(client: &Client, ns: &str, pod: &str, cmd: &[&str]) -> (bool, String) {
    exec_in(client, ns, pod, None, cmd).await
}

/// Like [`exec`], in a named container.
pub async fn exec_in(
    client: &Client,
    ns: &str,
    pod: &str,
    container: Option<&str>,
    cmd: &[&str],
) -> (bool, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut ap = AttachParams::default().stdout(true).stderr(true);
    if let Some(c) = container {
        ap = ap.container(c);
    }
    let mut p = pods
        .exec(
            pod,
            cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &ap,
        )
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?} in {ns}/{pod}: {e}"));
    let (mut so, mut se) = (p.stdout(), p.stderr());
    let (mut out, mut err) = (String::new(), String::new());
    let read_out = async {
        if let Some(so) = so.as_mut() {
            let _ = so.read_to_string(&mut out).await;
        }
    };
    let read_err = async {
        if let Some(se) = se.as_mut() {
            let _ = se.read_to_string(&mut err).await;
        }
    };
    tokio::join!(read_out, read_err);
    out.push_str(&err);
    let status = match p.take_status() {
        Some(s) => s.await,
        None => None,
    };
    let ok = status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success");
    (ok, out)
}
