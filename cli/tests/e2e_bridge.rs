//! End to end on the test bed: `bridge` sends a Service's traffic to a local
//! dev container, refusals (twice, missing deployment/container), `unbridge`
//! restores the Pod's image and its answers, `down` restores what is left.

mod common;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
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
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
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
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let addr = format!("{}:80", svc.spec.unwrap().cluster_ip.unwrap());
    assert!(wait_body(&addr, "cluster", 120), "web never answered");

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

    // bridge again, then `down` restores it
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
        "e2e-br2",
    ]);
    assert!(o.status.success());
    assert!(wait_body(&addr, "local", 30));
    let o = bed.gefyra(&["down"]);
    assert!(o.status.success(), "down failed: {}", common::stderr(&o));
    assert!(
        wait_body(&addr, "cluster", 60),
        "down did not restore the Pod"
    );
}
