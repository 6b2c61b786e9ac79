//! cargo-client binary: `cargo-client --config FILE` runs the tunnel;
//! `cargo-client status [-o json]` reports whether it is up.
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cargo-client",
    version,
    about = "gefyra's WireGuard client (TUN + userspace WireGuard)"
)]
struct Args {
    /// Config file (JSON or YAML, proto::config::CargoConfig).
    #[arg(long, env = "GEFYRA_CARGO_CONFIG")]
    config: Option<PathBuf>,
    /// Where the running daemon writes its status.
    #[arg(long, global = true, default_value = proto::CARGO_STATUS_FILE)]
    status_file: PathBuf,
    /// Do not add routes into the TUN (the caller routes).
    #[arg(long)]
    no_routes: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the tunnel status; exit 0 if the handshake is fresh, 1 if stale or never.
    Status {
        /// Output format: text or json.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
}

fn main() {
    let args = Args::parse();
    if let Some(Cmd::Status { output }) = &args.cmd {
        std::process::exit(status(&args.status_file, output));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env(proto::ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let Some(path) = &args.config else {
        eprintln!("cargo-client: pass --config FILE");
        std::process::exit(proto::EXIT_CONFIG);
    };
    let cfg = match cargo_client::load_config(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cargo-client: {e}");
            std::process::exit(proto::EXIT_CONFIG);
        }
    };
    if let Err(e) = cargo_client::parse_endpoint(&cfg.endpoint) {
        eprintln!("cargo-client: invalid config {}: {e}", path.display());
        std::process::exit(proto::EXIT_CONFIG);
    }
    let opts = cargo_client::Options {
        status_file: args.status_file.clone(),
        routes: !args.no_routes,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cargo-client: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(cargo_client::run(cfg, opts, shutdown_signal())) {
        eprintln!("cargo-client: {e}");
        std::process::exit(1);
    }
}

fn status(path: &std::path::Path, output: &str) -> i32 {
    match cargo_client::read_status(path) {
        Ok((st, fresh)) => {
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            } else {
                let hs = st
                    .last_handshake_secs
                    .map(|s| format!("{s} s ago"))
                    .unwrap_or_else(|| "never".into());
                println!(
                    "endpoint {}  tunnel ip {}  last handshake {}  rx {} B  tx {} B  {}",
                    st.endpoint,
                    st.tunnel_ip.map(|i| i.to_string()).unwrap_or_default(),
                    hs,
                    st.rx_bytes,
                    st.tx_bytes,
                    if fresh { "connected" } else { "NOT connected" }
                );
            }
            if fresh {
                0
            } else {
                1
            }
        }
        Err(e) => {
            if output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&proto::status::CargoStatus::default())
                        .unwrap_or_default()
                );
            }
            eprintln!("cargo-client: {e} (is the tunnel running?)");
            1
        }
    }
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
