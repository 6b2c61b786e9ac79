//! The namespace test of the whole path lives in `stowaway/tests/netns.rs`
//! (run it with `-p stowaway -p cargo-client --test netns`, which also builds
//! this package's binary). Here: the `status` subcommand of the real binary.

use std::process::Command;

#[test]
fn status_without_a_daemon_is_not_connected() {
    let missing =
        std::env::temp_dir().join(format!("no-such-cargo-status-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-client"))
        .args(["status", "-o", "json", "--status-file"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let st: proto::status::CargoStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!st.fresh);
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("cargo-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("c.yaml");
    std::fs::write(&p, "private_key: AAAA\nendpoint: 1.2.3.4:1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-client"))
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private_key") || err.contains("key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
