//! The tutorial's app (see the crate docs): HTTP on 0.0.0.0:8155 (`DEMO_LISTEN`), claim name from
//! `DEMO_CLAIM_FILE` (default /app/claim).
use gefyra_demo::{listen_addr, run_app, terminated, AppConfig, APP_PORT};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = listen_addr("DEMO_LISTEN", APP_PORT)?;
    let cfg = AppConfig::from_env();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "demo-app listening on {addr}, claim name from {}",
        cfg.claim_file.display()
    );
    run_app(listener, cfg, terminated()).await
}
