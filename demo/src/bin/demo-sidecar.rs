//! The tutorial's auth sidecar (see the crate docs): HTTP on 0.0.0.0:8809 (`DEMO_LISTEN`), adds the
//! token and proxies to `DEMO_UPSTREAM` (default 127.0.0.1:8155).
use gefyra_demo::{listen_addr, run_sidecar, terminated, SidecarConfig, SIDECAR_PORT};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = listen_addr("DEMO_LISTEN", SIDECAR_PORT)?;
    let cfg = SidecarConfig::from_env()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "demo-sidecar listening on {addr}, upstream {}",
        cfg.upstream
    );
    run_sidecar(listener, cfg, terminated()).await
}
