//! Shared helpers of the end-to-end tests: find the test bed, run the real
//! `gefyra` binary, deploy small fixtures with kube-rs.
//!
//! The bed is required (tests FAIL without it) when CI=true or GEFYRA_E2E=1;
//! otherwise a missing bed skips the test with a message.
#![allow(dead_code)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Bed {
    pub kubeconfig: PathBuf,
    pub registry: String,
    pub config_dir: PathBuf,
}

pub fn required() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
        || std::env::var("GEFYRA_E2E")
            .map(|v| v == "1")
            .unwrap_or(false)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bed if it is up and the images are in its registry; panics when required.
pub fn bed(test: &str) -> Option<Bed> {
    match find_bed() {
        Ok(b) => Some(b),
        Err(why) if required() => {
            panic!("{test}: the test bed is required (CI/GEFYRA_E2E) but {why}")
        }
        Err(why) => {
            eprintln!("{test}: SKIPPED: {why} (set GEFYRA_E2E=1 to make this a failure)");
            None
        }
    }
}

fn find_bed() -> Result<Bed, String> {
    let bed_sh = repo().join("testbed/bed.sh");
    if !bed_sh.exists() {
        return Err("testbed/bed.sh does not exist".into());
    }
    let st = Command::new(&bed_sh)
        .arg("status")
        .output()
        .map_err(|e| format!("cannot run bed.sh: {e}"))?;
    if !st.status.success() {
        return Err(format!(
            "the bed is not up (testbed/bed.sh up): {}",
            String::from_utf8_lossy(&st.stdout)
                .lines()
                .last()
                .unwrap_or("")
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
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    let kubeconfig = PathBuf::from(get("KUBECONFIG").ok_or("bed.sh env gave no KUBECONFIG")?);
    let registry = get("GEFYRA_REGISTRY").unwrap_or_else(|| "127.0.0.1:5000".into());
    for image in [proto::IMAGE_STOWAWAY, proto::IMAGE_CARGO] {
        let tags = registry_get(&registry, &format!("/v2/{image}/tags/list"))
            .map_err(|e| format!("registry {registry}: {e}"))?;
        if !tags.contains(proto::VERSION) {
            return Err(format!(
                "{image}:{} is not in {registry} (images/build.sh && images/push.sh {registry})",
                proto::VERSION
            ));
        }
    }
    let config_dir = std::env::temp_dir().join(format!("gefyra-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&config_dir).map_err(|e| e.to_string())?;
    Ok(Bed {
        kubeconfig,
        registry,
        config_dir,
    })
}

/// A plain HTTP GET to the registry on loopback.
fn registry_get(registry: &str, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(registry).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {registry}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

impl Bed {
    /// Runs `gefyra ARGS` with this bed's kubeconfig and a private config dir.
    pub fn gefyra(&self, args: &[&str]) -> Output {
        gefyra_with(&self.kubeconfig, &self.config_dir, args)
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }
}

pub fn gefyra_with(kubeconfig: &Path, config_dir: &Path, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gefyra"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("GEFYRA_CONFIG_DIR", config_dir)
        .env_remove("GEFYRA_LOG")
        .output()
        .expect("run gefyra");
    eprintln!(
        "$ gefyra {} -> {:?} in {:.1}s\n--- stdout\n{}--- stderr\n{}---",
        args.join(" "),
        out.status.code(),
        started.elapsed().as_secs_f32(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The error line of a failed command: exactly one line starting with `error:`.
pub fn assert_one_line_error(o: &Output, contains: &str) {
    assert!(!o.status.success(), "expected a failure");
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(
        lines[0].to_lowercase().contains(&contains.to_lowercase()),
        "error should mention '{contains}': {}",
        lines[0]
    );
}

/// The test workload: an HTTP server (busybox httpd) that answers
/// `/cgi-bin/ip` with the client's address and serves `/big` (50 MiB).
pub const ECHO_IMAGE: &str = "busybox:1.36";
pub const BIG_BYTES: u64 = 50 * 1024 * 1024;

pub async fn deploy_echo(client: &kube::Client, ns: &str) -> (String, String) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
    }))
    .unwrap();
    let _ = nss.create(&PostParams::default(), &n).await;
    let script = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && dd if=/dev/zero of=/www/big bs=1048576 count=50 2>/dev/null && exec httpd -f -v -p 8080 -h /www";
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {"containers": [{
                    "name": "echo", "image": ECHO_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                    "env": [{"name": "FOO", "value": "from-cluster"}, {"name": "BAR", "value": "cluster-bar"}],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
                }]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .expect("create echo deployment");
    let s: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8080, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create echo service");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("cluster ip");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=echo"))
            .await
            .unwrap();
        let ready = list.items.iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                .unwrap_or(false)
        });
        if let Some(p) = ready {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
            return (cluster_ip, ip);
        }
        assert!(
            Instant::now() < deadline,
            "echo did not become ready in 120s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn delete_namespace(client: &kube::Client, ns: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss.delete(ns, &DeleteParams::background()).await;
}

/// The ready stowaway Pod: (name, IP).
pub async fn stowaway_pod(client: &kube::Client) -> Option<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), proto::DEFAULT_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels("gefyra.dev/role=stowaway"))
        .await
        .ok()?;
    list.items.into_iter().find_map(|p| {
        let ready = p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                .unwrap_or(false);
        if ready {
            Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?))
        } else {
            None
        }
    })
}

/// Runs a command in a Docker container; returns (exit code, stdout).
pub async fn docker_exec(d: &bollard::Docker, container: &str, cmd: &[&str]) -> (i64, String) {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let e = d
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } = d.start_exec(&e.id, None).await.unwrap()
    {
        while let Some(Ok(m)) = output.next().await {
            if let bollard::container::LogOutput::StdOut { message } = m {
                out.push_str(&String::from_utf8_lossy(&message));
            }
        }
    }
    let code = d
        .inspect_exec(&e.id)
        .await
        .ok()
        .and_then(|i| i.exit_code)
        .unwrap_or(-1);
    (code, out)
}

/// Every gefyra-labelled object left in Docker.
pub async fn docker_leftovers(d: &bollard::Docker) -> Vec<String> {
    use std::collections::HashMap;
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    filters.insert("label".into(), vec!["gefyra.dev/app=gefyra".into()]);
    let mut left = Vec::new();
    let cs = d
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    for c in cs {
        // a Pod's containers (the bed's kubelet runs on this Docker) carry the Pod's labels
        let kubelet = c
            .labels
            .as_ref()
            .map(|l| l.keys().any(|k| k.starts_with("io.kubernetes.")))
            .unwrap_or(false);
        if !kubelet {
            left.push(format!("container {:?}", c.names));
        }
    }
    let ns = d
        .list_networks(Some(
            bollard::query_parameters::ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    for n in ns {
        left.push(format!("network {:?}", n.name));
    }
    left
}
