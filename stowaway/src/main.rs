//! stowaway binary: parse config, start tracing, call `stowaway::run`.
use anyhow::Context;
use clap::Parser;
use proto::config::StowawayConfig;
use std::path::PathBuf;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "stowaway",
    version,
    about = "gefyra's in-cluster userspace WireGuard endpoint"
)]
struct Args {
    /// Config file (JSON or YAML). Optional in cluster mode (GEFYRA_NAMESPACE set).
    #[arg(long, env = proto::ENV_STOWAWAY_CONFIG)]
    config: Option<PathBuf>,
}

fn main() {
    large_buffers_from_mmap();
    give_back_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_env(proto::ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let namespace = std::env::var(proto::ENV_STOWAWAY_NAMESPACE)
        .ok()
        .filter(|s| !s.is_empty());
    let config = match load(&args, namespace.is_some()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stowaway: {e:#}");
            std::process::exit(proto::EXIT_CONFIG);
        }
    };
    let settings = match stowaway::Settings::from_config(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stowaway: {e}");
            std::process::exit(proto::EXIT_CONFIG);
        }
    };
    // GEFYRA_WORKER_THREADS: unset or 1 runs everything on one thread: no
    // cross-thread wake-ups on the packet path (benches/REPORT.md: on the bridge
    // path added latency p50 185 -> 125 us, throughput equal or better, half the
    // CPU per exchange). N > 1: a work-stealing runtime with N workers, 0: one
    // worker per core (several busy peers can then use more than one core).
    let threads: usize = std::env::var("GEFYRA_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stowaway: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(config, settings, namespace)) {
        eprintln!("stowaway: {e:#}");
        std::process::exit(1);
    }
}

fn load(args: &Args, cluster: bool) -> anyhow::Result<StowawayConfig> {
    let mut config: Option<StowawayConfig> = match &args.config {
        Some(p) => Some(stowaway::load_config(p)?),
        None => None,
    };
    if cluster {
        let key = std::env::var(proto::ENV_STOWAWAY_PRIVATE_KEY)
            .with_context(|| format!("{} is not set", proto::ENV_STOWAWAY_PRIVATE_KEY))?;
        let key = proto::keys::Key::parse(&key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", proto::ENV_STOWAWAY_PRIVATE_KEY))?;
        match &mut config {
            Some(c) => c.private_key = key,
            None => {
                config = Some(
                    serde_json::from_value(serde_json::json!({ "private_key": key.to_base64() }))
                        .context("default config")?,
                )
            }
        }
    }
    config.ok_or_else(|| {
        anyhow::anyhow!(
            "no config: pass --config FILE (or set {}), or run in cluster mode ({} and {})",
            proto::ENV_STOWAWAY_CONFIG,
            proto::ENV_STOWAWAY_NAMESPACE,
            proto::ENV_STOWAWAY_PRIVATE_KEY
        )
    })
}

async fn serve(
    config: StowawayConfig,
    settings: stowaway::Settings,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let (udp, health) = stowaway::bind(config.listen, config.health_listen)
        .await
        .with_context(|| format!("binding {} / {}", config.listen, config.health_listen))?;
    let (peers_tx, peers_rx) = watch::channel(config.peers.clone());
    let (bridges_tx, bridges_rx) = watch::channel(config.bridges.clone());
    if let Some(ns) = namespace {
        let client = kube::Client::try_default()
            .await
            .context("cannot build a Kubernetes client (in-cluster config)")?;
        tokio::spawn(async move {
            if let Err(e) = stowaway::cluster::watch(client, ns, peers_tx, bridges_tx).await {
                tracing::error!(error = %e, "cluster watch ended");
            }
        });
    } else {
        // file mode: the sets never change; keep the senders alive
        tokio::spawn(async move {
            let _keep = (peers_tx, bridges_tx);
            std::future::pending::<()>().await;
        });
    }
    stowaway::run(
        settings,
        udp,
        health,
        peers_rx,
        bridges_rx,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// smoltcp's socket buffers (512 KiB per direction per TCP flow by default) are
/// allocated zeroed. Served by mmap, calloc needs no memset and only the pages
/// that carry data become resident; freed, they go back to the system at once.
/// glibc's dynamic threshold would otherwise climb past 512 KiB after the first
/// such free and serve them from the heap: a memset of 1 MiB per new flow (3-4x
/// the cost of accepting it, see benches/criterion-REPORT.md) and freed memory
/// kept around.
fn large_buffers_from_mmap() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets one of malloc's parameters; called first thing in
    // main, before any other thread exists or allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
    }
}

/// glibc keeps memory freed after a burst of flows in its heaps (seen in
/// benches/peers-REPORT.md: 44 MiB resident with 9 MiB in use after a soak).
/// Every 30 s, give what is free back to the system.
fn give_back_freed_memory() {
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(30));
            // SAFETY: malloc_trim only releases free memory of malloc's own
            // heaps; it is thread-safe (takes each arena's lock).
            unsafe {
                libc::malloc_trim(0);
            }
        });
}
