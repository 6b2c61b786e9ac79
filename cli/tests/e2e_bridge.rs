//! End to end on the test bed: `bridge` sends a Service's traffic to a local
//! dev container, refusals (twice, missing deployment/container), `unbridge`
//! restores the Pod's image and its answers, `down` restores what is left.

mod common;

use futures::FutureExt;
use gefyra_cli::cmd_bridge::{create_unless_clashing, pick_route_ports, record_bridge};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use proto::cluster::{BridgePort, BridgeSpec};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// HTTP/1.0 GET from this host (which reaches ClusterIPs, as any cluster client does).
fn get(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

fn wait_body(addr: &str, want: &str, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if get(addr).as_deref() == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_unbridge_on_the_bed() {
    let Some(bed) = common::bed("bridge_unbridge_on_the_bed") else {
        return;
    };
    let client = bed.client().await;
    let ns = format!("e2e-br-{}", std::process::id());
    let result = std::panic::AssertUnwindSafe(scenario(&bed, &client, &ns))
        .catch_unwind()
        .await;
    let _ = bed.gefyra(&["down", "--all"]);
    common::delete_namespace(&client, &ns).await;
    let _ = std::fs::remove_dir_all(&bed.config_dir);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

async fn scenario(bed: &common::Bed, client: &kube::Client, ns: &str) {
    // a web Deployment answering "cluster" on 8080, Service port 80
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    // Route ports picked at the same instant: both bridges pick (list) before either records
    // (create), in this test's namespace (stowaway does not watch it). The later record gives
    // way; picking again gives it another port.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let race = |name: &str| BridgeSpec {
        name: name.into(),
        connection: "default".into(),
        namespace: ns.into(),
        container: "app".into(),
        pods: vec![],
        ports: vec![BridgePort {
            remote: 80,
            local: 80,
            route_port: 0,
        }],
        local_ip: std::net::Ipv4Addr::new(192, 0, 2, 1),
        http_probe_ports: vec![],
    };
    let (mut ra, mut rb) = (race("race-a"), race("race-b"));
    pick_route_ports(&cms, &mut ra).await.unwrap();
    pick_route_ports(&cms, &mut rb).await.unwrap();
    assert_eq!(ra.ports[0].route_port, rb.ports[0].route_port);
    let a = create_unless_clashing(&cms, &ra, "default").await.unwrap();
    let b = create_unless_clashing(&cms, &rb, "default").await.unwrap();
    assert!(
        a && !b,
        "the earlier record keeps the port, the later gives way ({a}, {b})"
    );
    record_bridge(&cms, &mut rb, "default").await.unwrap();
    assert_ne!(
        ra.ports[0].route_port, rb.ports[0].route_port,
        "two bridges recorded at once share a route port"
    );
    for n in ["race-a", "race-b"] {
        let _ = cms
            .delete(
                &proto::cluster::bridge_configmap_name(n),
                &Default::default(),
            )
            .await;
    }

    // two of them: "web" for most steps, "web2" to bridge at the same instant as "web"
    let mut addrs = Vec::new();
    for name in ["web", "web2"] {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "app", "image": common::ECHO_IMAGE, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "mkdir -p /www && echo cluster > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}}
        }))
        .unwrap();
        Api::<Deployment>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
        let svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        addrs.push(format!("{}:80", svc.spec.unwrap().cluster_ip.unwrap()));
    }
    let (addr, addr2) = (addrs[0].clone(), addrs[1].clone());
    assert!(wait_body(&addr, "cluster", 120), "web never answered");
    assert!(wait_body(&addr2, "cluster", 60), "web2 never answered");

    let o = bed.gefyra(&["up", "--registry", &bed.registry]);
    assert!(o.status.success(), "up failed");
    let o = bed.gefyra(&[
        "run",
        "-d",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-local",
        "-n",
        ns,
        "-c",
        "sh -c 'mkdir -p /www && echo local > /www/index.html && exec httpd -f -p 8080 -h /www'",
    ]);
    assert!(o.status.success(), "run failed");

    // the tutorial's flag style
    let o = bed.gefyra(&[
        "bridge",
        "-N",
        "e2e-local",
        "-n",
        ns,
        "--deployment",
        "web",
        "--port",
        "8080:8080",
        "--container-name",
        "app",
        "-I",
        "e2e-br",
    ]);
    assert!(o.status.success(), "bridge failed: {}", common::stderr(&o));
    assert!(common::stdout(&o).contains("Bridge e2e-br established"));
    assert!(
        wait_body(&addr, "local", 30),
        "the Service does not answer from the local container"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    let ann = p[0].metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("gefyra.dev/original-image.app").map(String::as_str),
        Some(common::ECHO_IMAGE),
        "the original image is kept on the Pod"
    );
    let o = bed.gefyra(&["list", "-o", "json"]);
    assert!(common::stdout(&o).contains("e2e-br"));

    // refusals: twice, missing deployment, missing container
    let o = bed.gefyra(&[
        "bridge",
        "-N",
        "e2e-local",
        "-n",
        ns,
        "--target",
        "deployment/web/app",
        "-p",
        "8080:8080",
        "-I",
        "e2e-twice",
    ]);
    common::assert_one_line_error(&o, "already bridged");
    let o = bed.gefyra(&[
        "bridge",
        "-N",
        "e2e-local",
        "-n",
        ns,
        "--deployment",
        "nope",
        "-p",
        "80:80",
        "-I",
        "e2e-x",
    ]);
    common::assert_one_line_error(&o, "not found");
    let o = bed.gefyra(&[
        "bridge",
        "-N",
        "e2e-local",
        "-n",
        ns,
        "--deployment",
        "web",
        "--container-name",
        "nope",
        "-p",
        "80:80",
        "-I",
        "e2e-y",
    ]);
    common::assert_one_line_error(&o, "no container nope");

    // unbridge: the original image and answers come back
    let o = bed.gefyra(&["unbridge", "-I", "e2e-br"]);
    assert!(
        o.status.success(),
        "unbridge failed: {}",
        common::stderr(&o)
    );
    assert!(
        wait_body(&addr, "cluster", 60),
        "the in-cluster app does not answer again"
    );
    let p = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    let c = &p[0].spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some(common::ECHO_IMAGE));
    assert!(!p[0]
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .contains_key("gefyra.dev/original-image.app"));

    // two bridges started at the same instant get distinct route ports, and both work
    let bridge = |target: &'static str, name: &'static str| {
        let (kc, dir, ns) = (
            bed.kubeconfig.clone(),
            bed.config_dir.clone(),
            ns.to_string(),
        );
        std::thread::spawn(move || {
            common::gefyra_with(
                &kc,
                &dir,
                &[
                    "bridge",
                    "-N",
                    "e2e-local",
                    "-n",
                    &ns,
                    "--target",
                    target,
                    "-p",
                    "8080:8080",
                    "-I",
                    name,
                ],
            )
        })
    };
    let (b2, b3) = (
        bridge("deployment/web/app", "e2e-br2"),
        bridge("deployment/web2/app", "e2e-br3"),
    );
    let (o2, o3) = (b2.join().unwrap(), b3.join().unwrap());
    assert!(
        o2.status.success(),
        "bridge e2e-br2: {}",
        common::stderr(&o2)
    );
    assert!(
        o3.status.success(),
        "bridge e2e-br3: {}",
        common::stderr(&o3)
    );
    assert!(wait_body(&addr, "local", 30), "web is not bridged");
    assert!(wait_body(&addr2, "local", 30), "web2 is not bridged");
    let o = bed.gefyra(&["status"]);
    let status = common::stdout(&o);
    let mut route_ports = Vec::new();
    for b in ["e2e-br2", "e2e-br3"] {
        let line = status
            .lines()
            .find(|l| l.contains(&format!("bridge {b}:")))
            .unwrap_or_else(|| panic!("status shows no line for {b}: {status}"));
        assert!(
            line.contains("carriers connected 1/1")
                && line.contains(" open,")
                && line.contains("tunnel to the local container up"),
            "status of {b}: {line}"
        );
        let port = line
            .split("route ports ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_default()
            .to_string();
        route_ports.push(port);
    }
    assert_ne!(
        route_ports[0], route_ports[1],
        "two bridges share a route port: {status}"
    );
    let o = bed.gefyra(&["down"]);
    assert!(o.status.success(), "down failed: {}", common::stderr(&o));
    assert!(
        wait_body(&addr, "cluster", 60),
        "down did not restore the Pod"
    );
    assert!(
        wait_body(&addr2, "cluster", 60),
        "down did not restore the second Pod"
    );
}
