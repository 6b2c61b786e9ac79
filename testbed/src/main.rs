//! `testbed-dns`: the test bed's cluster DNS (test-bed code, not product code).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hickory_proto::rr::Name;

#[derive(Parser)]
#[command(about = "The gefyra test bed's cluster DNS")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve DNS for the cluster domain from a watch of Services and Endpoints.
    Serve {
        /// Address to listen on (UDP and TCP), e.g. docker0's 172.17.0.1:53.
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        domain: String,
        /// Forward names outside the domain here (default: answer REFUSED).
        #[arg(long)]
        upstream: Option<SocketAddr>,
    },
    /// Ask a server for the A records of NAME; prints one address per line.
    Query {
        #[arg(long)]
        server: SocketAddr,
        name: String,
        #[arg(long, default_value_t = 2)]
        timeout_secs: u64,
    },
    /// UDP echo server (for smoke tests): replies PREFIX + datagram to each sender.
    UdpEcho {
        #[arg(long, default_value = "0.0.0.0:9999")]
        listen: SocketAddr,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Sends MESSAGE to ADDR over UDP and prints the reply (exit 1 after TRIES timeouts).
    UdpAsk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "ping")]
        message: String,
        #[arg(long, default_value_t = 2)]
        timeout_secs: u64,
        #[arg(long, default_value_t = 3)]
        tries: u32,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(proto::ENV_LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Query {
            server,
            name,
            timeout_secs,
        } => {
            match gefyra_testbed::query::query_a(server, &name, Duration::from_secs(timeout_secs)) {
                Ok(ips) => {
                    for ip in ips {
                        println!("{ip}");
                    }
                    Ok(())
                }
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
        Cmd::Serve {
            listen,
            kubeconfig,
            domain,
            upstream,
        } => serve(listen, kubeconfig, domain, upstream),
        Cmd::UdpEcho { listen, prefix } => std::net::UdpSocket::bind(listen)
            .and_then(|s| gefyra_testbed::tools::udp_echo(&s, &prefix, None))
            .with_context(|| format!("udp echo on {listen}")),
        Cmd::UdpAsk {
            to,
            message,
            timeout_secs,
            tries,
        } => gefyra_testbed::tools::udp_ask(
            to,
            message.as_bytes(),
            Duration::from_secs(timeout_secs),
            tries,
        )
        .map(|r| println!("{}", String::from_utf8_lossy(&r)))
        .with_context(|| format!("no UDP reply from {to}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testbed-dns: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(
    listen: SocketAddr,
    kubeconfig: PathBuf,
    domain: String,
    upstream: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let domain = Name::from_ascii(format!("{}.", domain.trim_end_matches('.')))
        .with_context(|| format!("bad cluster domain {domain:?}"))?
        .to_lowercase();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let udp = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("binding udp {listen}"))?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding tcp {listen}"))?;
    let zone = tokio::time::timeout(
        Duration::from_secs(60),
        gefyra_testbed::cluster::ClusterZone::start(client),
    )
    .await
    .context("the API server did not list Services and Endpoints within 60 s")??;
    tracing::info!(%listen, %domain, ?upstream, "serving");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    gefyra_testbed::run(
        gefyra_testbed::ServerConfig { domain, upstream },
        Arc::new(zone),
        udp,
        tcp,
        shutdown,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
