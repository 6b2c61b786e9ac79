//! `gefyra`: run a local container as if it ran inside a Kubernetes cluster.
#![forbid(unsafe_code)]

pub mod args;
pub mod bridge_info;
pub mod cmd_bridge;
pub mod cmd_down;
pub mod cmd_info;
pub mod cmd_run;
pub mod cmd_up;
pub mod docker;
pub mod k8s;
pub mod manifests;
pub mod route;
pub mod state;
pub mod ui;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Global options shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Path of the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Output format of commands that print data
    #[arg(short = 'o', long, global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// The connection (one machine can hold several: each has its own key, network and cargo)
    #[arg(long, global = true, default_value = "default", value_parser = args::connection_name)]
    pub connection: String,
}

#[derive(Debug, Parser)]
#[command(
    name = "gefyra",
    version,
    about = "Run a local container as if it ran inside a Kubernetes cluster",
    propagate_version = true
)]
pub struct Cli {
    /// Debug logs on stderr (or set GEFYRA_LOG)
    #[arg(short = 'd', long)]
    pub debug: bool,
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install the cluster side when missing and connect this machine (tunnel + cargo)
    Up(cmd_up::UpArgs),
    /// Remove dev containers, cargo, the network and this client's registration (--all: also the cluster side)
    Down(cmd_down::DownArgs),
    /// Run a local container inside the cluster's network, in a namespace
    Run(cmd_run::RunArgs),
    /// Send the traffic of a container in cluster Pods to a local dev container
    Bridge(cmd_bridge::BridgeArgs),
    /// Remove a bridge (-I NAME) or all (-A) and restore the Pods' original images
    Unbridge(cmd_bridge::UnbridgeArgs),
    /// List dev containers with their address on the gefyra network, and bridges
    List,
    /// Show the state of the cluster side, this client and the tunnel
    Status,
    /// Check Docker, the cluster, permissions and versions
    Check,
    /// Print the version
    Version,
    #[command(name = "__wait-route", hide = true)]
    WaitRoute(cmd_run::WaitRouteArgs),
    #[command(name = "__set-route", hide = true)]
    SetRoute(cmd_run::SetRouteArgs),
}

/// Runs a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Up(a) => cmd_up::up(&g, a).await,
        Command::Down(a) => cmd_down::down(&g, a).await,
        Command::Run(a) => cmd_run::run(&g, a).await,
        Command::Bridge(a) => cmd_bridge::bridge(&g, a).await,
        Command::Unbridge(a) => cmd_bridge::unbridge(&g, a).await,
        Command::List => cmd_info::list(&g).await,
        Command::Status => cmd_info::status(&g).await,
        Command::Check => cmd_info::check(&g).await,
        Command::Version => cmd_info::version(&g).await,
        Command::WaitRoute(a) => cmd_run::wait_route(a),
        Command::SetRoute(a) => cmd_run::set_route(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tutorial_commands_parse() {
        let c = Cli::try_parse_from([
            "gefyra",
            "run",
            "-i",
            "quay.io/gefyra/oauth2-demo",
            "-N",
            "myfastapi-demo",
            "-n",
            "oauth2-demo",
            "-v",
            "/home/u/gefyra-demos/oauth2-demo/app:/app",
            "-c",
            "bash -c 'python -m debugpy --wait-for-client --listen 0.0.0.0:5678 -m uvicorn main:app --host 0.0.0.0 --port 8155 --reload'",
        ])
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.name.as_deref(), Some("myfastapi-demo"));
        assert_eq!(r.namespace, "oauth2-demo");
        assert_eq!(r.volume.len(), 1);
        assert!(Cli::try_parse_from(["gefyra", "up"]).is_ok());
        assert!(Cli::try_parse_from(["gefyra", "down"]).is_ok());
        let c = Cli::try_parse_from(["gefyra", "-d", "run", "-d", "-i", "x", "--rm"]).unwrap();
        assert!(c.debug);
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert!(r.detach && r.rm);
        let c = Cli::try_parse_from(["gefyra", "list", "-o", "json", "--connection", "second"])
            .unwrap();
        assert_eq!(c.global.output, Output::Json);
        assert_eq!(c.global.connection, "second");
        let c = Cli::try_parse_from([
            "gefyra",
            "bridge",
            "-N",
            "myfastapi-demo",
            "-n",
            "oauth2-demo",
            "--deployment",
            "oauth2-demo",
            "--port",
            "8155:8155",
            "--container-name",
            "oauth2-demo-app",
            "-I",
            "myfastapi",
        ])
        .unwrap();
        let Command::Bridge(b) = c.command else {
            panic!("not bridge")
        };
        assert_eq!(b.deployment.as_deref(), Some("oauth2-demo"));
        assert_eq!(b.port[0].remote, 8155);
        assert!(Cli::try_parse_from([
            "gefyra",
            "bridge",
            "-N",
            "x",
            "--target",
            "deployment/a/b",
            "-p",
            "80:8080",
            "-p",
            "81:8081"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["gefyra", "unbridge", "-A"]).is_ok());
        assert!(Cli::try_parse_from(["gefyra", "unbridge"]).is_err());
        let e = Cli::try_parse_from(["gefyra", "run", "-i", "x", "-p", "80"]).unwrap_err();
        assert!(e.to_string().contains("HOST_PORT:CONTAINER_PORT"), "{e}");
        let e = Cli::try_parse_from(["gefyra", "run", "-i", "x", "--env-from", "deployment"])
            .unwrap_err();
        assert!(e.to_string().contains("TYPE/NAME"), "{e}");
    }
}
