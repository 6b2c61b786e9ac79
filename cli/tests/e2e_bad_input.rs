//! Bad input: one line saying what is wrong and what to do, exit != 0, nothing
//! half-created. These need Docker but no cluster.

mod common;

use std::path::Path;

fn gefyra(dir: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    common::gefyra_with(kubeconfig, dir, args)
}

#[test]
fn malformed_flags_are_refused_with_one_line() {
    let dir = std::env::temp_dir().join(format!("gefyra-bad-{}", std::process::id()));
    let kc = dir.join("none");
    for (args, says) in [
        (
            vec!["run", "-i", "busybox:1.36", "-p", "80"],
            "HOST_PORT:CONTAINER_PORT",
        ),
        (vec!["run", "-i", "busybox:1.36", "-p", "a:80"], "port"),
        (
            vec!["run", "-i", "busybox:1.36", "--env-from", "deployment"],
            "TYPE/NAME",
        ),
        (
            vec!["run", "-i", "busybox:1.36", "--env-from", "job/x"],
            "unknown workload type",
        ),
        (
            vec!["run", "-i", "busybox:1.36", "-v", "/a"],
            "SOURCE:TARGET",
        ),
        (vec!["up", "--port", "80"], "30000-32767"),
        (vec!["up", "--host", "h:x"], "port"),
        (vec!["--connection", "Bad_Name", "up"], "connection name"),
    ] {
        let o = gefyra(&dir, &kc, &args);
        assert_eq!(o.status.code(), Some(proto::EXIT_CONFIG), "{args:?}");
        common::assert_one_line_error(&o, says);
    }
    // not up: says what to do
    let o = gefyra(&dir, &kc, &["run", "-i", "busybox:1.36"]);
    common::assert_one_line_error(&o, "gefyra up");
}

#[tokio::test]
async fn unreachable_cluster_creates_nothing() {
    let dir = std::env::temp_dir().join(format!("gefyra-unreach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    // a cluster on a closed loopback port
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let conn = format!("unreach{}", std::process::id());
    let o = gefyra(&dir, &kc, &["--connection", &conn, "up"]);
    common::assert_one_line_error(&o, "cannot reach the cluster");
    let o = gefyra(
        &dir,
        &kc,
        &["--kubeconfig", "/nonexistent/kubeconfig", "up"],
    );
    common::assert_one_line_error(&o, "--kubeconfig");
    // nothing of this connection exists in Docker, no state was written
    let d = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let left: Vec<String> = common::docker_leftovers(&d)
        .await
        .into_iter()
        .filter(|l| l.contains(&conn))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!dir.join(&conn).join("state.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
