//! End to end on the test bed: the tutorial's bridge scenario (shared/seed/oauth2-demo.md) with the
//! demo workloads (demo/: a sidecar that adds a JWT and proxies to 127.0.0.1:8155, an app that reads
//! the claim named in /app/claim), plus issue 6's second and third tests:
//!
//! 1. `up`; `run` the app locally with `-v` (claim `Email`) and `-N`; `bridge` exactly as the tutorial
//!    does; a request through the Service answers 500 from the LOCAL container (its log shows the
//!    request and the sidecar's token); the mounted file is fixed (`email`); the next request answers
//!    `{"item_id":123,"Email":"john@gefyra.dev"}`; `unbridge` → 500 from the in-cluster app again.
//! 2. bridging a bridged Pod again is refused; a missing deployment / container is a clear error;
//!    a bridge with two ports (`--target` syntax) serves both.
//! 3. a connection to a route port from a Pod-network address that is not bridged is refused; the
//!    stowaway Pod deleted during a bridge → requests work again within 30 s; the CLI killed right
//!    after patching → `unbridge -A` restores the Pod.
//!
//! Finally `down` → the Pod runs its original images and no bridge is left.
//! Requests "from inside the cluster" come from short-lived busybox containers on docker0's default
//! bridge (on the bed they share the network with the Pods; gefyra's own networks cannot reach it).

mod common;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CONN: &str = "bridge-e2e";
const LOCAL: &str = "e2e-myfastapi-demo";
const BRIDGE: &str = "e2e-myfastapi";
const EMAIL: &str = "john@gefyra.dev";

/// The tutorial's bridge flags (its `-I` aside).
const TUTORIAL_FLAGS: [&str; 6] = [
    "--deployment",
    "oauth2-demo",
    "--port",
    "8155:8155",
    "--container-name",
    "oauth2-demo-app",
];

/// `bridge -N LOCAL -n NS ARGS... -I NAME`.
fn bridge_args<'a>(ns: &'a str, args: &[&'a str], name: &'a str) -> Vec<&'a str> {
    let mut v = vec!["bridge", "-N", LOCAL, "-n", ns];
    v.extend_from_slice(args);
    v.extend(["-I", name]);
    v
}

fn g(bed: &common::Bed, args: &[&str]) -> std::process::Output {
    let mut v = vec!["--connection", CONN];
    v.extend_from_slice(args);
    bed.gefyra(&v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_on_the_bed() {
    let Some(bed) = common::bed("tutorial_on_the_bed") else {
        return;
    };
    let version = proto::VERSION;
    for image in [
        "gefyra-demo-app",
        "gefyra-demo-sidecar",
        proto::IMAGE_CARRIER,
    ] {
        let ok = Command::new("docker")
            .args(["pull", "-q", &format!("{}/{image}:{version}", bed.registry)])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            let why = format!(
                "{image}:{version} is not in {} (demo/images.sh {0}; images/build.sh && images/push.sh {0})",
                bed.registry
            );
            if common::required() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
    }
    let client = bed.client().await;
    let ns = format!("oauth2-demo-e2e-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("gefyra-e2e-bridge-app-{}", std::process::id()));
    let result = std::panic::AssertUnwindSafe(scenario(&bed, &client, &ns, &dir))
        .catch_unwind()
        .await;
    // cleanup whatever happened
    let _ = g(&bed, &["unbridge", "-A"]);
    let _ = g(&bed, &["down"]);
    common::delete_namespace(&client, &ns).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&bed.config_dir);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// The tutorial's workload (demo/oauth2-demo.yaml) in namespace `ns`; returns the Service's ClusterIP.
async fn deploy_demo(client: &kube::Client, ns: &str, registry: &str) -> String {
    let v = proto::VERSION;
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
    }))
    .unwrap();
    nss.create(&PostParams::default(), &n)
        .await
        .expect("namespace");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "oauth2-demo", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "oauth2-demo"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "oauth2-demo"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "oauth2-proxy",
                            "image": format!("{registry}/gefyra-demo-sidecar:{v}"),
                            "imagePullPolicy": "IfNotPresent",
                            "env": [{"name": "DEMO_EMAIL", "value": EMAIL}],
                            "ports": [{"containerPort": 8809, "protocol": "TCP", "name": "http"}]
                        },
                        {
                            "name": "oauth2-demo-app",
                            "image": format!("{registry}/gefyra-demo-app:{v}"),
                            "imagePullPolicy": "Always",
                            "ports": [{"containerPort": 8155, "protocol": "TCP", "name": "http-intern"}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": 8155}, "periodSeconds": 2}
                        }
                    ]
                }
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .expect("create oauth2-demo deployment");
    let s: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "oauth2-demo", "namespace": ns},
        "spec": {
            "selector": {"app.kubernetes.io/name": "oauth2-demo"},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}]
        }
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create oauth2-demo service");
    svc.spec.and_then(|s| s.cluster_ip).expect("cluster ip")
}

/// The demo's single ready Pod: (name, IP).
async fn demo_pod(client: &kube::Client, ns: &str) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=oauth2-demo"))
            .await
            .unwrap();
        let ready: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                        .unwrap_or(false)
            })
            .collect();
        if ready.len() == 1 && list.items.len() == 1 {
            let p = ready[0];
            return (
                p.metadata.name.clone().unwrap(),
                p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "oauth2-demo did not become ready in 120s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The images the Pod's containers run now (name → image from the status), and its annotations.
/// The Pod runs the app's original image and carries no gefyra annotation.
async fn assert_original(client: &kube::Client, ns: &str, pod: &str, app_image: &str) {
    let (images, ann) = pod_images(client, ns, pod).await;
    assert_eq!(
        images.get("oauth2-demo-app").map(String::as_str),
        Some(app_image),
        "{images:?}"
    );
    assert!(ann.keys().all(|k| !k.starts_with("gefyra.dev/")), "{ann:?}");
}

async fn pod_images(
    client: &kube::Client,
    ns: &str,
    pod: &str,
) -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, String>,
) {
    let p = Api::<Pod>::namespaced(client.clone(), ns)
        .get(pod)
        .await
        .expect("pod");
    let images = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
        .map(|c| (c.name, c.image))
        .collect();
    (images, p.metadata.annotations.unwrap_or_default())
}

/// An HTTP/1.0 GET from inside the cluster network (a busybox container on docker0's default
/// bridge): the raw response (status line, headers, body), empty when the connection gave nothing.
fn cluster_get(host: &str, port: u16, path: &str) -> String {
    let script = format!(
        "printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | timeout -s KILL 15 nc -w 10 {host} {port}; exit 0"
    );
    let o = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "40",
            "docker",
            "run",
            "--rm",
            "--network",
            "bridge",
            "busybox:1.36",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .expect("docker run busybox");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!(
        "cluster GET {host}:{port}{path} -> {:?}",
        out.lines().next().unwrap_or("")
    );
    out
}

fn status_of(raw: &str) -> u16 {
    raw.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// GETs until `ok` holds for the response or `secs` pass; returns the last response.
async fn get_until(
    host: &str,
    port: u16,
    path: &str,
    secs: u64,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = cluster_get(host, port, path);
        if ok(&r) || Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn docker_logs(name: &str) -> String {
    let o = Command::new("docker")
        .args(["logs", name])
        .output()
        .expect("docker logs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn docker_hostname(name: &str) -> String {
    let o = Command::new("docker")
        .args(["inspect", "-f", "{{.Config.Hostname}}", name])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

async fn bridge_configmaps(client: &kube::Client) -> Vec<String> {
    Api::<ConfigMap>::namespaced(client.clone(), proto::DEFAULT_NAMESPACE)
        .list(&ListParams::default().labels("gefyra.dev/role=bridge"))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

fn write_claim(dir: &Path, claim: &str) {
    // write + rename: the app re-reads the file on every request and never sees half a write
    let tmp = dir.join(".claim.tmp");
    std::fs::write(&tmp, format!("{claim}\n")).unwrap();
    std::fs::rename(&tmp, dir.join("claim")).unwrap();
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        common::stdout(o),
        common::stderr(o)
    );
}

async fn scenario(bed: &common::Bed, client: &kube::Client, ns: &str, dir: &Path) {
    let v = proto::VERSION;
    let app_image = format!("{}/gefyra-demo-app:{v}", bed.registry);
    let sidecar_image = format!("{}/gefyra-demo-sidecar:{v}", bed.registry);
    let carrier_image = proto::image_ref(&bed.registry, proto::IMAGE_CARRIER, v);
    let cluster_ip = deploy_demo(client, ns, &bed.registry).await;
    let (pod, pod_ip) = demo_pod(client, ns).await;
    eprintln!("oauth2-demo: ClusterIP {cluster_ip}, Pod {pod} {pod_ip}");

    // the bug, in the cluster
    let r = get_until(&cluster_ip, 8080, "/items/123", 30, |r| status_of(r) != 0).await;
    assert_eq!(status_of(&r), 500, "the in-cluster app has the bug: {r}");
    assert_eq!(header(&r, "x-demo-host"), Some(pod.as_str()), "{r}");
    let r = cluster_get(&cluster_ip, 8080, "/");
    assert_eq!(body(&r), r#"{"Hello":"World"}"#, "{r}");

    // gefyra up; run the app locally with the source (the claim file) mounted
    assert_ok(&g(bed, &["up", "--registry", &bed.registry]), "up");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write_claim(dir, "Email");
    let vol = format!("{}:/app", dir.display());
    let o = g(
        bed,
        &[
            "run", "-d", "-i", &app_image, "-N", LOCAL, "-n", ns, "-v", &vol,
        ],
    );
    assert_ok(&o, "run");
    let local_host = docker_hostname(LOCAL);
    assert!(!local_host.is_empty());

    // issue 6 test 2: clear errors before anything changes
    let o = g(
        bed,
        &bridge_args(
            ns,
            &[
                "--deployment",
                "no-such-app",
                "--port",
                "8155:8155",
                "--container-name",
                "oauth2-demo-app",
            ],
            "e2e-missing",
        ),
    );
    common::assert_one_line_error(&o, "not found");
    let o = g(
        bed,
        &bridge_args(
            ns,
            &[
                "--deployment",
                "oauth2-demo",
                "--port",
                "8155:8155",
                "--container-name",
                "no-such-container",
            ],
            "e2e-missing",
        ),
    );
    common::assert_one_line_error(&o, "no-such-container");
    assert!(bridge_configmaps(client).await.is_empty());
    assert_original(client, ns, &pod, &app_image).await;

    // the tutorial's bridge command, as written
    let o = g(
        bed,
        &[
            "bridge",
            "-N",
            LOCAL,
            "-n",
            ns,
            "--deployment",
            "oauth2-demo",
            "--port",
            "8155:8155",
            "--container-name",
            "oauth2-demo-app",
            "-I",
            BRIDGE,
        ],
    );
    assert_ok(&o, "bridge");
    let err = common::stderr(&o);
    assert!(
        err.contains(&format!("Creating bridge for Pod {pod}")),
        "{err}"
    );
    assert!(
        format!("{err}{}", common::stdout(&o)).contains("established"),
        "{err}"
    );
    // the Pod is the same Pod: its IP and sidecar stay, the app container runs carrier
    let (images, ann) = pod_images(client, ns, &pod).await;
    assert_eq!(
        images.get("oauth2-demo-app"),
        Some(&carrier_image),
        "{images:?}"
    );
    assert_eq!(
        images.get("oauth2-proxy"),
        Some(&sidecar_image),
        "{images:?}"
    );
    assert_eq!(
        ann.get(&proto::original_image_annotation("oauth2-demo-app")),
        Some(&app_image)
    );
    assert_eq!(demo_pod(client, ns).await, (pod.clone(), pod_ip.clone()));

    // through the Service: 500, answered by the LOCAL container, which saw the sidecar's token
    let r = get_until(&cluster_ip, 8080, "/items/123", 20, |r| status_of(r) == 500).await;
    assert_eq!(status_of(&r), 500, "{r}");
    assert_eq!(
        header(&r, "x-demo-host"),
        Some(local_host.as_str()),
        "the local container must answer: {r}"
    );
    let logs = docker_logs(LOCAL);
    let line = logs
        .lines()
        .find(|l| l.starts_with("GET /items/123 token="))
        .unwrap_or_else(|| panic!("the local log shows the request: {logs}"));
    let token = line.trim_start_matches("GET /items/123 token=");
    let claims = gefyra_demo_claims(token);
    assert_eq!(
        claims["email"], EMAIL,
        "the sidecar's token reached the local app: {line}"
    );
    assert!(logs.contains("KeyError: 'Email'"), "{logs}");

    // fix the "code": the next request answers with the email
    write_claim(dir, "email");
    let r = cluster_get(&cluster_ip, 8080, "/items/123");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body(&r)).unwrap(),
        serde_json::json!({"item_id": 123, "Email": EMAIL})
    );
    assert_eq!(header(&r, "x-demo-host"), Some(local_host.as_str()));

    // list and status show the bridge
    let o = g(bed, &["list", "-o", "json"]);
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).expect("list json");
    assert!(
        l["bridges"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["name"] == BRIDGE)),
        "{l}"
    );
    let o = g(bed, &["status", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status json");
    let b = s["stowaway"]["bridges"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == BRIDGE).cloned())
        .unwrap_or_else(|| panic!("status shows the bridge: {s}"));
    assert_eq!(b["carriers"][0]["configured"], true, "{b}");
    assert_eq!(b["routes_open"], true, "{b}");
    let route_port = b["route_ports"][0].as_u64().expect("route port") as u16;

    // bridging the bridged Pod again is refused, and changes nothing
    let o = g(
        bed,
        &bridge_args(
            ns,
            &[
                "--target",
                "deployment/oauth2-demo/oauth2-demo-app",
                "--port",
                "8155:8155",
            ],
            "e2e-twice",
        ),
    );
    common::assert_one_line_error(&o, "already bridged");
    assert_eq!(
        bridge_configmaps(client).await,
        vec![proto::cluster::bridge_configmap_name(BRIDGE)]
    );

    // a route port reached from an address that is not a bridged Pod: refused (no answer, and the
    // local app sees no request)
    let (_, stow_ip) = common::stowaway_pod(client).await.expect("stowaway");
    let before = docker_logs(LOCAL).lines().count();
    let r = cluster_get(&stow_ip, route_port, "/items/999");
    assert_eq!(
        status_of(&r),
        0,
        "a non-bridged source must be refused: {r}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = docker_logs(LOCAL);
    assert!(
        !after.contains("/items/999"),
        "the local app must not see it: {after}"
    );
    assert!(after.lines().count() >= before);

    // stowaway deleted during the bridge: requests work again within 30 s, no user action
    let (stow_name, _) = common::stowaway_pod(client).await.expect("stowaway");
    Api::<Pod>::namespaced(client.clone(), proto::DEFAULT_NAMESPACE)
        .delete(&stow_name, &Default::default())
        .await
        .expect("delete stowaway pod");
    let t0 = Instant::now();
    let r = get_until(&cluster_ip, 8080, "/items/123", 60, |r| {
        status_of(r) == 200 && header(r, "x-demo-host") == Some(local_host.as_str())
    })
    .await;
    let took = t0.elapsed();
    eprintln!("bridge back after the stowaway Pod was deleted: {took:?}");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(
        took <= Duration::from_secs(30),
        "the bridge came back only after {took:?}"
    );

    // unbridge: the in-cluster app answers again (with its bug)
    let o = g(bed, &["unbridge", "-I", BRIDGE]);
    assert_ok(&o, "unbridge");
    assert_original(client, ns, &pod, &app_image).await;
    let r = get_until(&cluster_ip, 8080, "/items/123", 30, |r| {
        header(r, "x-demo-host") == Some(pod.as_str())
    })
    .await;
    assert_eq!(status_of(&r), 500, "{r}");
    assert_eq!(header(&r, "x-demo-host"), Some(pod.as_str()), "{r}");
    assert!(bridge_configmaps(client).await.is_empty());

    // two ports, --target syntax: 8155 and 9155 of the Pod both reach the local 8155
    let o = g(
        bed,
        &bridge_args(
            ns,
            &[
                "--target",
                "deployment/oauth2-demo/oauth2-demo-app",
                "-p",
                "8155:8155",
                "-p",
                "9155:8155",
            ],
            "e2e-two-ports",
        ),
    );
    assert_ok(&o, "bridge with two ports");
    let (_, pod_ip_now) = demo_pod(client, ns).await;
    for port in [8155u16, 9155] {
        let r = get_until(&pod_ip_now, port, "/items/5", 20, |r| status_of(r) == 200).await;
        assert_eq!(status_of(&r), 200, "port {port}: {r}");
        assert_eq!(
            header(&r, "x-demo-host"),
            Some(local_host.as_str()),
            "port {port}"
        );
    }
    let o = g(bed, &["unbridge", "-A"]);
    assert_ok(&o, "unbridge -A");
    assert!(bridge_configmaps(client).await.is_empty());

    // the CLI killed right after patching: `unbridge -A` restores the Pod
    let mut child = Command::new(env!("CARGO_BIN_EXE_gefyra"))
        .args(["--connection", CONN])
        .args(bridge_args(ns, &TUTORIAL_FLAGS, "e2e-killed"))
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("GEFYRA_CONFIG_DIR", &bed.config_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn gefyra bridge");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = Api::<Pod>::namespaced(client.clone(), ns)
            .get(&pod)
            .await
            .expect("pod");
        let patched = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "oauth2-demo-app"))
            .and_then(|c| c.image.clone())
            == Some(carrier_image.clone());
        if patched {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("gefyra bridge ended ({st}) before the Pod was patched");
        }
        assert!(Instant::now() < deadline, "the Pod was never patched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().expect("kill gefyra bridge");
    let _ = child.wait();
    let o = g(bed, &["unbridge", "-A"]);
    assert_ok(&o, "unbridge -A after a killed bridge");
    assert_original(client, ns, &pod, &app_image).await;
    assert!(bridge_configmaps(client).await.is_empty());

    // bridge once more, then `down` restores the Pod too
    let o = g(bed, &bridge_args(ns, &TUTORIAL_FLAGS, BRIDGE));
    assert_ok(&o, "bridge again");
    let o = g(bed, &["down"]);
    assert_ok(&o, "down");
    let (images, ann) = pod_images(client, ns, &pod).await;
    assert_eq!(
        images.get("oauth2-demo-app"),
        Some(&app_image),
        "{images:?}"
    );
    assert_eq!(
        images.get("oauth2-proxy"),
        Some(&sidecar_image),
        "{images:?}"
    );
    assert!(ann.keys().all(|k| !k.starts_with("gefyra.dev/")), "{ann:?}");
    assert!(bridge_configmaps(client).await.is_empty());
    let r = get_until(&cluster_ip, 8080, "/items/123", 30, |r| status_of(r) == 500).await;
    assert_eq!(header(&r, "x-demo-host"), Some(pod.as_str()), "{r}");
}

/// The JWT payload (no signature check), as the demo app reads it.
fn gefyra_demo_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("json")
}
