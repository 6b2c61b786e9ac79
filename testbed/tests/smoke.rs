//! Smoke tests of the test bed: what every end-to-end test relies on.
//!
//!   eval "$(testbed/bed.sh env)"; images/build.sh && images/push.sh "$GEFYRA_REGISTRY"
//!   GEFYRA_E2E=1 cargo test --profile ci -p gefyra-testbed --test smoke
//!
//! Each test works in its own namespace and removes it, its containers and networks at the end.
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, PostParams};

/// `wget URL` bounded to `secs` seconds in a container. Through `sh -c "...; exit $?"` so that
/// wget is not PID 1 (PID 1 ignores the signals `timeout` sends).
fn wget_cmd(url: &str, secs: u32) -> [String; 3] {
    [
        "sh".into(),
        "-c".into(),
        format!("timeout -s KILL {secs} wget -q -O - {url}; exit $?"),
    ]
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("Service has a ClusterIP")
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("Pod has an IP")
}

/// A Deployment of a locally built image pulled from the bed's registry becomes Ready; its
/// ClusterIP Service answers from another Pod (by DNS name, short name and address), from the
/// host, and from a plain Docker container on the default bridge; the name resolves in the Pod.
#[tokio::test]
async fn deployment_service_and_dns() {
    let Some(bed) = bed("deployment_service_and_dns") else {
        return;
    };
    let client = bed.client().await;
    let image = tools_image(&bed);
    let ns = Ns::create(&bed, &client, "smoke-web").await;
    let n = ns.name.as_str();

    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "httpd", "image": image, "imagePullPolicy": "Always",
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
                }]}
            }
        }
    }))
    .unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), n);
    deploys
        .create(&PostParams::default(), &deploy)
        .await
        .expect("create Deployment");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), n);
    let svc = svcs
        .create(&PostParams::default(), &svc)
        .await
        .expect("create Service");
    let ip = cluster_ip(&svc);
    let client_pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "client"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    pods.create(&PostParams::default(), &client_pod)
        .await
        .expect("create client Pod");

    let ready = tokio::time::timeout(
        Duration::from_secs(120),
        wait_for("Deployment web ready", 120, || async {
            let d = deploys.get("web").await.ok()?;
            (d.status?.ready_replicas? == 1).then_some(())
        }),
    )
    .await;
    if ready.is_err() {
        let story = pod_story(&client, n, "web").await;
        panic!("Deployment web not Ready after 120 s\n{story}");
    }
    pod_ready(&pods, "client", 90).await;

    // from another Pod: DNS name, short name (search path), ClusterIP
    let fqdn = format!("web.{n}.svc.cluster.local");
    for url in [
        format!("http://{fqdn}/"),
        "http://web/".to_string(),
        format!("http://{ip}/"),
    ] {
        let (ok, out) = exec(
            &client,
            n,
            "client",
            &["timeout", "8", "wget", "-q", "-O", "-", &url],
        )
        .await;
        assert!(
            ok && out.contains("hello-from-pod"),
            "wget {url} from a Pod: {out}"
        );
    }
    let (ok, out) = exec(&client, n, "client", &["nslookup", &fqdn]).await;
    assert!(
        ok && out.contains(&ip),
        "nslookup {fqdn} in a Pod should give {ip}: {out}"
    );
    let (ok, out) = exec(
        &client,
        n,
        "client",
        &["nslookup", &format!("nope.{n}.svc.cluster.local")],
    )
    .await;
    assert!(
        !ok || !out.contains("Address: 10.96."),
        "a missing Service must not resolve: {out}"
    );

    // from the host
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    let (status, body) = http_get(addr, "/", "*/*").expect("GET ClusterIP from the host");
    assert_eq!((status, body.trim()), (200, "hello-from-pod"));

    // from a plain Docker container on the default bridge
    let (ok, out) = docker_run(
        &format!("smoke-plain-{}", suffix()),
        None,
        &image,
        &wget_cmd(&format!("http://{ip}/"), 8),
    );
    assert!(
        ok && out.contains("hello-from-pod"),
        "ClusterIP from a plain container: {out}"
    );
}

/// A UDP NodePort reaches a Pod (from the host on loopback and on the node address, and from a
/// container on a separate Docker network); that container reaches neither the Pod's address
/// nor the ClusterIP, while a container on the default bridge reaches both (positive control).
#[tokio::test]
async fn udp_nodeport_and_devnet_isolation() {
    let Some(bed) = bed("udp_nodeport_and_devnet_isolation") else {
        return;
    };
    let t0 = std::time::Instant::now();
    let client = bed.client().await;
    let image = tools_image(&bed);
    let ns = Ns::create(&bed, &client, "smoke-udp").await;
    let n = ns.name.as_str();

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo", "labels": {"app": "echo"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "udp", "image": image, "imagePullPolicy": "Always",
             "command": ["/bin/testbed-dns", "udp-echo", "--listen", "0.0.0.0:9999", "--prefix", "echo-pod:"],
             "ports": [{"containerPort": 9999, "protocol": "UDP"}]},
            {"name": "http", "image": image, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
             "ports": [{"containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}
        ]}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create Pod");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {"type": "NodePort", "selector": {"app": "echo"}, "ports": [
            {"name": "udp", "port": 9999, "targetPort": 9999, "protocol": "UDP"},
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
        ]}
    }))
    .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), n);
    let svc = svcs
        .create(&PostParams::default(), &svc)
        .await
        .expect("create Service");
    let node_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.iter().find(|p| p.protocol.as_deref() == Some("UDP")))
        .and_then(|p| p.node_port)
        .expect("UDP nodePort");
    let cip = cluster_ip(&svc);
    let ready = tokio::time::timeout(Duration::from_secs(120), pod_ready(&pods, "echo", 120)).await;
    let pod = match ready {
        Ok(p) => p,
        Err(_) => panic!(
            "Pod echo not Ready after 120 s\n{}",
            pod_story(&client, n, "echo").await
        ),
    };
    let pip = pod_ip(&pod);
    eprintln!(
        "[{:?}] echo Pod ready at {pip}, ClusterIP {cip}, NodePort {node_port}",
        t0.elapsed()
    );
    let node_ip: Ipv4Addr = bed.node_ip.parse().expect("node ip");

    // from the host: loopback and node address (kube-proxy may need a moment for the rules)
    for host in [Ipv4Addr::LOCALHOST, node_ip] {
        let to = SocketAddr::from((host, node_port as u16));
        let reply = wait_for(&format!("UDP echo via NodePort {to}"), 30, || async move {
            tokio::task::spawn_blocking(move || {
                gefyra_testbed::tools::udp_ask(to, b"ping", Duration::from_secs(1), 1).ok()
            })
            .await
            .ok()
            .flatten()
        })
        .await;
        assert_eq!(reply, b"echo-pod:ping", "NodePort {to}");
    }

    eprintln!("[{:?}] NodePort answers from the host", t0.elapsed());
    // positive control on the default bridge (where Pods live): Pod IP and ClusterIP answer
    let tag = suffix();
    let (ok, out) = docker_run(
        &format!("smoke-bridge-{tag}"),
        None,
        &image,
        &[
            "sh",
            "-c",
            &format!(
                "timeout -s KILL 8 wget -q -O - http://{pip}:8080/ && timeout -s KILL 8 wget -q -O - http://{cip}/; exit $?"
            ),
        ],
    );
    assert!(
        ok && out.matches("hello-from-pod").count() == 2,
        "default bridge -> Pod IP and ClusterIP: {out}"
    );

    eprintln!(
        "[{:?}] default bridge reaches Pod IP and ClusterIP",
        t0.elapsed()
    );
    // hairpin: the Pod reaches itself through its own Service (bed.sh sets hairpin mode on
    // docker0's ports every 2 s)
    let hairpin = wait_for("the Pod reaching itself via its ClusterIP", 20, || {
        let (client, n, url) = (client.clone(), n.to_string(), format!("http://{cip}/"));
        async move {
            let (ok, out) = exec_in(
                &client,
                &n,
                "echo",
                Some("http"),
                &["timeout", "-s", "KILL", "3", "wget", "-q", "-O", "-", &url],
            )
            .await;
            (ok && out.contains("hello-from-pod")).then_some(())
        }
    });
    hairpin.await;
    eprintln!(
        "[{:?}] hairpin: the Pod reaches itself via its Service",
        t0.elapsed()
    );

    // the "developer machine": a separate Docker network (br-*)
    let net = NetworkGuard::create(&format!("smoke-devnet-{tag}"));
    let np = format!("{}:{node_port}", bed.node_ip);
    let (ok, out) = docker_run(
        &format!("smoke-dev-np-{tag}"),
        Some(&net.0),
        &image,
        &[
            "/bin/testbed-dns",
            "udp-ask",
            "--to",
            &np,
            "--message",
            "dev",
            "--timeout-secs",
            "2",
            "--tries",
            "5",
        ],
    );
    assert!(
        ok && out.contains("echo-pod:dev"),
        "devnet -> UDP NodePort {np}: {out}"
    );
    let (ok, out) = docker_run(
        &format!("smoke-dev-pod-{tag}"),
        Some(&net.0),
        &image,
        &wget_cmd(&format!("http://{pip}:8080/"), 4),
    );
    assert!(
        !ok && !out.contains("hello-from-pod"),
        "devnet must NOT reach the Pod address {pip}: {out}"
    );
    let (ok, out) = docker_run(
        &format!("smoke-dev-podudp-{tag}"),
        Some(&net.0),
        &image,
        &[
            "/bin/testbed-dns",
            "udp-ask",
            "--to",
            &format!("{pip}:9999"),
            "--timeout-secs",
            "2",
            "--tries",
            "1",
        ],
    );
    assert!(
        !ok && !out.contains("echo-pod:"),
        "devnet must NOT reach the Pod's UDP port directly: {out}"
    );
    let (ok, out) = docker_run(
        &format!("smoke-dev-cip-{tag}"),
        Some(&net.0),
        &image,
        &wget_cmd(&format!("http://{cip}/"), 4),
    );
    assert!(
        !ok && !out.contains("hello-from-pod"),
        "devnet must NOT reach the ClusterIP {cip}: {out}"
    );
    let (ok, out) = docker_run(
        &format!("smoke-dev-dns-{tag}"),
        Some(&net.0),
        &image,
        &[
            "/bin/testbed-dns",
            "query",
            "--server",
            &format!("{}:53", bed.node_ip),
            "--timeout-secs",
            "2",
            "kubernetes.default.svc.cluster.local",
        ],
    );
    assert!(
        !ok && !out.contains("10.96.0.1"),
        "devnet must NOT reach the cluster DNS: {out}"
    );
}

/// The stowaway image runs as a Pod under the restricted settings (non-root, all capabilities
/// dropped, read-only root, no privilege escalation, RuntimeDefault seccomp), the kernel shows
/// them applied to its process, and its health endpoint answers.
#[tokio::test]
async fn stowaway_runs_restricted() {
    let Some(bed) = bed("stowaway_runs_restricted") else {
        return;
    };
    let name = proto::IMAGE_STOWAWAY;
    if !registry_has(&bed, name, VERSION) {
        let why = format!(
            "{}/{name}:{VERSION} is not in the bed's registry (run: images/build.sh stowaway && images/push.sh {} stowaway)",
            bed.registry, bed.registry
        );
        assert!(!required(), "{why}");
        eprintln!("stowaway_runs_restricted: SKIPPED: {why}");
        return;
    }
    let client = bed.client().await;
    let ns = Ns::create(&bed, &client, "smoke-stowaway").await;
    let n = ns.name.as_str();
    let image = proto::image_ref(&bed.registry, name, VERSION);

    let key = proto::keys::Key([7u8; 32]).to_base64();
    let config = serde_json::json!({ "private_key": key }).to_string();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stowaway-config"},
        "stringData": {"config.json": config}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
    let port = proto::STOWAWAY_HEALTH_PORT;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stowaway"},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "config", "secret": {"secretName": "stowaway-config"}}],
            "containers": [{
                "name": "stowaway", "image": image, "imagePullPolicy": "Always",
                "env": [{"name": proto::ENV_STOWAWAY_CONFIG, "value": "/etc/gefyra/config.json"}],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/gefyra", "readOnly": true}],
                "ports": [{"containerPort": proto::WIREGUARD_PORT, "protocol": "UDP"}, {"containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1},
                "securityContext": {
                    "runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}
                }
            }]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create stowaway Pod");
    let pod =
        match tokio::time::timeout(Duration::from_secs(120), pod_ready(&pods, "stowaway", 120))
            .await
        {
            Ok(p) => p,
            Err(_) => panic!(
                "stowaway Pod not Ready after 120 s\n{}",
                pod_story(&client, n, "stowaway").await
            ),
        };

    // the fields as the API server stored them (v1.20 has no PodSecurity admission to check them)
    let spec = pod.spec.as_ref().unwrap();
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );

    // what the kernel applied to the container's process
    let id = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.kubernetes.pod.namespace={n}"),
        "--filter",
        "label=io.kubernetes.container.name=stowaway",
    ]);
    assert!(
        !id.is_empty() && !id.contains('\n'),
        "one stowaway container expected, got {id:?}"
    );
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read the container process status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:").first().copied(),
        Some("65532"),
        "runs as uid 65532:\n{status}"
    );
    assert_eq!(
        field("CapEff:"),
        vec!["0000000000000000"],
        "no effective capabilities"
    );
    assert_eq!(
        field("CapPrm:"),
        vec!["0000000000000000"],
        "no permitted capabilities"
    );
    assert_eq!(field("NoNewPrivs:"), vec!["1"], "no privilege escalation");
    assert_eq!(
        field("Seccomp:"),
        vec!["2"],
        "a seccomp filter (the runtime default) is active"
    );
    let ro = docker_ok(&["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", &id]);
    assert_eq!(ro, "true", "read-only root filesystem");

    // the health endpoint, from the host (the node) to the Pod address
    let addr: SocketAddr = format!("{}:{port}", pod_ip(&pod)).parse().unwrap();
    let (status, body) = http_get(addr, "/healthz", "*/*").expect("GET /healthz");
    assert_eq!(status, 200, "GET /healthz: {body}");
}
