//! The two demo workloads on loopback: the sidecar's token reaches the app, the claim file is
//! re-read on every request (500 with `Email`, the email with `email`).
use gefyra_demo::{run_app, run_sidecar, AppConfig, SidecarConfig};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn tutorial_bug_and_fix_through_the_sidecar() {
    let dir = std::env::temp_dir().join(format!("gefyra-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let claim = dir.join("claim");
    std::fs::write(&claim, "Email\n").unwrap();

    let app_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app_l.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let app = tokio::spawn(run_app(
        app_l,
        AppConfig {
            claim_file: claim.clone(),
        },
        async move {
            let _ = rx1.changed().await;
        },
    ));
    let side_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let side_addr = side_l.local_addr().unwrap();
    let mut rx2 = stop_rx.clone();
    let side = tokio::spawn(run_sidecar(
        side_l,
        SidecarConfig {
            upstream: app_addr,
            email: "john@gefyra.dev".into(),
        },
        async move {
            let _ = rx2.changed().await;
        },
    ));

    assert_eq!(
        get(side_addr, "/").await,
        (200, r#"{"Hello":"World"}"#.to_string())
    );
    let (code, body) = get(side_addr, "/items/123").await;
    assert_eq!(code, 500, "{body}");
    // without the sidecar there is no token
    assert_eq!(
        get(app_addr, "/items/7").await,
        (200, r#"{"Email":"not given","item_id":7}"#.to_string())
    );
    std::fs::write(&claim, "email\n").unwrap();
    let (code, body) = get(side_addr, "/items/123").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"item_id": 123, "Email": "john@gefyra.dev"})
    );
    assert_eq!(get(side_addr, "/items/abc").await.0, 422);
    // a client that half-closes while it waits (nc, HTTP/1.0) still gets its answer
    let mut s = TcpStream::connect(side_addr).await.unwrap();
    s.write_all(b"GET /items/9 HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.0 200"), "{buf}");

    // clean shutdown of both
    stop_tx.send(true).unwrap();
    app.await.unwrap().unwrap();
    side.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokens_round_trip() {
    let t = gefyra_demo::make_token(&serde_json::json!({"email": "a@b"}));
    let m = gefyra_demo::token_claims(&t).unwrap();
    assert_eq!(m["email"], "a@b");
    assert!(gefyra_demo::token_claims("x.y").is_err());
    assert!(gefyra_demo::token_claims("a.!!!.c").is_err());
}
