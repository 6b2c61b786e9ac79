//! End to end on the test bed: `up`, `run` (Service by short name, by svc.ns
//! and by ClusterIP, `--env-from`, `-v`), traffic proven to go through the
//! tunnel (the server sees stowaway's Pod address; stowaway's counters move),
//! stowaway Pod deleted mid-test, a second connection added during a transfer,
//! bad input after `up`, and `down --all` leaving nothing labelled gefyra.

mod common;

use futures::FutureExt;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_run_down_on_the_bed() {
    let Some(bed) = common::bed("up_run_down_on_the_bed") else {
        return;
    };
    let client = bed.client().await;
    let ns = format!("e2e-{}", std::process::id());
    let docker = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let result = std::panic::AssertUnwindSafe(scenario(&bed, &client, &docker, &ns))
        .catch_unwind()
        .await;
    // cleanup whatever happened
    let _ = bed.gefyra(&["--connection", "second", "down"]);
    let _ = bed.gefyra(&["down", "--all"]);
    common::delete_namespace(&client, &ns).await;
    let _ = std::fs::remove_dir_all(&bed.config_dir);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

async fn scenario(bed: &common::Bed, client: &kube::Client, docker: &bollard::Docker, ns: &str) {
    let (cluster_ip, echo_ip) = common::deploy_echo(client, ns).await;
    eprintln!("echo: ClusterIP {cluster_ip}, Pod {echo_ip}");

    // up, then up again is a no-op that says so
    let o = bed.gefyra(&["up", "--registry", &bed.registry]);
    assert!(o.status.success(), "up failed: {}", common::stderr(&o));
    let o = bed.gefyra(&["up", "--registry", &bed.registry]);
    assert!(o.status.success());
    assert!(
        common::stdout(&o).contains("already up"),
        "{}",
        common::stdout(&o)
    );
    let (stow_name, stow_ip) = common::stowaway_pod(client).await.expect("stowaway ready");

    let status = |b: &common::Bed| -> serde_json::Value {
        let o = b.gefyra(&["status", "-o", "json"]);
        serde_json::from_slice(&o.stdout).expect("status json")
    };
    let before = status(bed);
    let flows_before = before["stowaway"]["counters"]["tcp_flows_total"]
        .as_u64()
        .unwrap_or(0);

    // run: short name, svc.ns, ClusterIP, --env-from with -e override, -v
    let dir = bed.config_dir.join("mount");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the host\n").unwrap();
    let vol = format!("{}:/mnt/host", dir.display());
    // busybox-static's getaddrinfo cannot resolve (static glibc NSS): names are resolved with
    // busybox's own nslookup (resolv.conf, search domains), then HTTP goes over nc
    std::fs::write(dir.join("probe.sh"), PROBE).unwrap();
    let script = format!(
        "sh -c 'echo SHORT=$(sh /mnt/host/probe.sh echo | tail -1); \
         echo SVCNS=$(sh /mnt/host/probe.sh echo.{ns} | tail -1); \
         echo CIP=$(sh /mnt/host/probe.sh {cluster_ip} | tail -1); \
         echo FOO=$FOO BAR=$BAR; cat /mnt/host/hello.txt'"
    );
    let o = bed.gefyra(&[
        "run",
        "--rm",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-probe",
        "-n",
        ns,
        "--env-from",
        "deployment/echo",
        "-e",
        "BAR=local",
        "-v",
        &vol,
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "run failed: {}", common::stderr(&o));
    let out = common::stdout(&o);
    // busybox httpd gives REMOTE_ADDR as [::ffff:a.b.c.d]
    for key in ["SHORT", "SVCNS", "CIP"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_default();
        assert!(
            line.contains(&format!(":{stow_ip}]")) || line == format!("{key}={stow_ip}"),
            "{key}: the server must see stowaway's Pod address {stow_ip} (echo Pod {echo_ip}): {out}"
        );
    }
    assert!(out.contains("FOO=from-cluster BAR=local"), "{out}");
    assert!(out.contains("hello from the host"), "{out}");
    let after = status(bed);
    let flows_after = after["stowaway"]["counters"]["tcp_flows_total"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        flows_after >= flows_before + 3,
        "stowaway's TCP flow counter must move: {flows_before} -> {flows_after}"
    );

    // a long-lived dev container; list shows its address
    let o = bed.gefyra(&[
        "run",
        "-d",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-loop",
        "-n",
        ns,
        "-v",
        &vol,
        "-c",
        "sleep 900",
    ]);
    assert!(o.status.success());
    let o = bed.gefyra(&["list", "-o", "json"]);
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = l["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "e2e-loop")
        .cloned()
        .expect("e2e-loop listed");
    assert!(row["address"].as_str().unwrap_or("").contains('.'), "{row}");

    // bad input after up: name taken, image neither local nor pullable, port taken,
    // missing namespace for --env-from; nothing half-created
    let o = bed.gefyra(&[
        "run",
        "-d",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-loop",
        "-c",
        "true",
    ]);
    common::assert_one_line_error(&o, "already exists");
    let missing = format!("{}/gefyra-e2e-missing:1", bed.registry);
    let o = bed.gefyra(&["run", "-d", "-i", &missing, "-N", "e2e-missing"]);
    common::assert_one_line_error(&o, "neither local nor pullable");
    let o = bed.gefyra(&[
        "run",
        "-d",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-p1",
        "-p",
        "127.0.0.1:18765:80",
        "-c",
        "sleep 60",
    ]);
    assert!(o.status.success());
    let o = bed.gefyra(&[
        "run",
        "-d",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-p2",
        "-p",
        "127.0.0.1:18765:80",
        "-c",
        "sleep 60",
    ]);
    common::assert_one_line_error(&o, "port");
    let o = bed.gefyra(&[
        "run",
        "-d",
        "-i",
        common::ECHO_IMAGE,
        "-N",
        "e2e-ns",
        "-n",
        "no-such-ns-e2e",
        "--env-from",
        "deployment/echo",
    ]);
    common::assert_one_line_error(&o, "namespace");
    for n in ["e2e-missing", "e2e-p2", "e2e-ns"] {
        assert!(
            docker
                .inspect_container(
                    n,
                    None::<bollard::query_parameters::InspectContainerOptions>
                )
                .await
                .is_err(),
            "{n} must not exist after a failed run"
        );
    }

    // stowaway Pod deleted: traffic works again without user action (up to 30 s)
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), proto::DEFAULT_NAMESPACE);
    pods.delete(&stow_name, &Default::default()).await.unwrap();
    let t0 = Instant::now();
    let mut healed = None;
    while t0.elapsed() < Duration::from_secs(30) {
        let (code, out) =
            common::docker_exec(docker, "e2e-loop", &["sh", "/mnt/host/probe.sh", "echo"]).await;
        if code == 0 {
            if let Some((name, ip)) = common::stowaway_pod(client).await {
                if name != stow_name && out.contains(&ip) {
                    healed = Some(t0.elapsed());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let healed =
        healed.expect("traffic did not recover within 30s after deleting the stowaway Pod");
    eprintln!("recovered {healed:?} after the stowaway Pod was deleted");

    // a second connection joins while the first transfers 3 x 50 MiB: the first loses nothing
    let transfer = {
        let docker = docker.clone();
        tokio::spawn(async move {
            common::docker_exec(
                &docker,
                "e2e-loop",
                &[
                    "sh",
                    "-c",
                    "for i in 1 2 3; do sh /mnt/host/probe.sh echo /big | wc -c; done",
                ],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = bed.gefyra(&["--connection", "second", "up", "--registry", &bed.registry]);
    assert!(
        o.status.success(),
        "second up failed: {}",
        common::stderr(&o)
    );
    let (code, out) = transfer.await.unwrap();
    assert_eq!(code, 0, "transfer failed: {out}");
    let sizes: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    // each answer is the 50 MiB body plus the same few header bytes
    assert_eq!(sizes.len(), 3, "{out}");
    assert!(
        sizes
            .iter()
            .all(|s| *s == sizes[0] && *s > common::BIG_BYTES && *s < common::BIG_BYTES + 1024),
        "the first connection lost data: {out}"
    );
    let o = bed.gefyra(&[
        "--connection",
        "second",
        "run",
        "--rm",
        "-i",
        common::ECHO_IMAGE,
        "-n",
        ns,
        "-v",
        &vol,
        "-c",
        "sh /mnt/host/probe.sh echo",
    ]);
    assert!(o.status.success(), "second run failed");
    assert!(
        common::stdout(&o).contains("200 OK"),
        "{}",
        common::stdout(&o)
    );
    let o = bed.gefyra(&["--connection", "second", "down"]);
    assert!(o.status.success());

    // down --all: nothing labelled gefyra remains
    let o = bed.gefyra(&["down", "--all"]);
    assert!(o.status.success(), "down failed: {}", common::stderr(&o));
    let left = common::docker_leftovers(docker).await;
    assert!(left.is_empty(), "Docker still has: {left:?}");
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::all(client.clone());
    let lp = kube::api::ListParams::default().labels("gefyra.dev/app=gefyra");
    assert!(cms.list(&lp).await.unwrap().items.is_empty());
    let all_pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client.clone());
    assert!(all_pods.list(&lp).await.unwrap().items.is_empty());
    let nss: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    assert!(nss.list(&lp).await.unwrap().items.is_empty());
}

/// `probe.sh NAME_OR_IP [PATH]`: resolve (nslookup, search domains apply), then HTTP/1.0 GET on 8080.
const PROBE: &str = r#"#!/bin/sh
# like a resolver with ndots:5: the search domains of /etc/resolv.conf first, then the name as is
a() { nslookup "$1" 2>/dev/null | awk '/^Name:/ {n=1} n && /^Address:/ && $2 !~ /:/ {a=$2} END {print a}'; }
r() {
  case "$1" in
    *[!0-9.]*)
      for d in $(awk '/^search/ {$1=""; print}' /etc/resolv.conf) ""; do
        ip=$(a "$1${d:+.$d}")
        [ -n "$ip" ] && { echo "$ip"; return; }
      done ;;
    *) echo "$1" ;;
  esac
}
ip=$(r "$1")
[ -n "$ip" ] || { echo "cannot resolve $1" >&2; exit 2; }
printf 'GET %s HTTP/1.0\r\n\r\n' "${2:-/cgi-bin/ip}" | nc -w 30 "$ip" 8080
"#;
