//! Command line, invocation names and exit codes.

use crate::forward::{self, ForwardOptions, Mapping};
use crate::pod::{self, PodOptions};
use crate::proxy::CopyMode;
use crate::serve::ConnOptions;
use crate::target::{parse_listen, Target};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code when carrier is exec'd under another program's name in a bridged
/// container (`sh`, `python`, ...): it cannot run that program.
pub const EXIT_BRIDGED: u8 = 1;

pub const ENV_GRACE: &str = "GEFYRA_CARRIER_GRACE_SECS";
pub const ENV_MAX_CONNECTIONS: &str = "GEFYRA_CARRIER_MAX_CONNECTIONS";
pub const ENV_NO_SPLICE: &str = "GEFYRA_CARRIER_NO_SPLICE";
pub const ENV_SOURCE_IP: &str = "GEFYRA_CARRIER_SOURCE_IP";

const AFTER_HELP: &str = "\
Invocation:
  As PID 1 (the bridged container's process), or with GEFYRA_CARRIER_POD=1,
  carrier runs in-Pod mode whatever its name and arguments (see `carrier pod`).
  Otherwise the name it was invoked under decides: `carrier` gives this command
  line; `env` prints the environment like env(1) (so `kubectl exec POD -- env`
  works on a bridged container); any other name (sh, python, node, ...) prints
  that the container is bridged by gefyra and exits with status 1.

Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 64 for bad flags or a
listen address that cannot be bound, 1 when invoked under another name.
Logs go to stderr; filter with GEFYRA_LOG (e.g. GEFYRA_LOG=debug).";

#[derive(Debug, Parser)]
#[command(name = "carrier", version, about = "gefyra's TCP reverse proxy: a port forwarder, and the stand-in of a bridged container", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Forward TCP ports: each connection to a listen address is relayed to its target.
    #[command(after_help = "\
Mappings: give --listen and --to in pairs (the n-th --listen goes to the n-th
--to), or --map LISTEN=TO; both can be mixed and repeated.
  carrier forward --listen 0.0.0.0:8080 --to backend.local:80 \\
                  --listen [::]:8443 --to [fd00::5]:443 \\
                  --map 127.0.0.1:5432=10.0.0.7:5432
LISTEN is IP:PORT ([IPv6]:PORT); TO is HOST:PORT, where a host name is resolved
per connection (DNS from /etc/resolv.conf and /etc/hosts), so changes are picked
up as their TTL runs out. Zero-copy splice(2) moves the bytes unless --no-splice.
On SIGTERM/SIGINT carrier stops accepting and waits up to --grace seconds for
open connections to finish.")]
    Forward(ForwardArgs),
    /// In-Pod mode: wait for stowaway on the control port and serve the port map it sends.
    #[command(after_help = "\
Every flag can also come from its environment variable, which is how in-Pod
mode is configured when carrier runs as PID 1 (its arguments are then ignored).
Ports below 1024: carrier's image runs as uid 65532; binding such a port needs
NET_BIND_SERVICE or the sysctl net.ipv4.ip_unprivileged_port_start, otherwise
stowaway receives an error naming the port and both remedies.")]
    Pod(PodArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Most connections open at once (all mappings together); more wait in the backlog.
    #[arg(long, default_value_t = 10_000, env = ENV_MAX_CONNECTIONS, value_name = "N")]
    max_connections: u32,
    /// Seconds open connections may take to finish after SIGTERM.
    #[arg(long, default_value = "10", env = ENV_GRACE, value_name = "SECS", value_parser = parse_secs)]
    grace: Duration,
    /// Seconds to wait for an upstream connection.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    connect_timeout: Duration,
    /// Copy through a user-space buffer instead of splice(2).
    #[arg(long, env = ENV_NO_SPLICE)]
    no_splice: bool,
    /// Source address of upstream connections (default: chosen by the kernel;
    /// in-Pod mode: the bind address when it is not 0.0.0.0).
    #[arg(long, env = ENV_SOURCE_IP, value_name = "IP")]
    source_ip: Option<IpAddr>,
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// Listen address (IP:PORT); pairs with the --to at the same position.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Target (HOST:PORT) of the --listen at the same position.
    #[arg(long, value_name = "HOST:PORT")]
    to: Vec<String>,
    /// A mapping in one flag.
    #[arg(long, value_name = "LISTEN=TO")]
    map: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct PodArgs {
    /// Control address stowaway dials.
    #[arg(long, env = proto::ENV_CARRIER_CONTROL_ADDR, value_name = "ADDR:PORT",
          default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, proto::CARRIER_CONTROL_PORT)))]
    control: SocketAddr,
    /// Address the container's ports are bound on.
    #[arg(long, env = proto::ENV_CARRIER_BIND_IP, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    #[command(flatten)]
    common: Common,
}

/// In-Pod mode from the environment alone (PID 1).
#[derive(Debug, Parser)]
#[command(name = "carrier")]
struct PodFromEnv {
    #[command(flatten)]
    pod: PodArgs,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("`{s}` is not a number of seconds"))
}

/// How the binary was started.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Pod,
    Cli,
    Env,
    /// Exec'd under another program's name.
    Other(String),
}

/// Decides the mode: PID 1 (or the env switch) wins, then argv[0]'s basename.
pub fn invocation(pid: u32, pod_env: Option<&str>, argv0: Option<&OsString>) -> Invocation {
    if pid == 1 || pod_env == Some("1") {
        return Invocation::Pod;
    }
    let name = argv0
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    if name.is_empty() || name.starts_with("carrier") {
        Invocation::Cli
    } else if name == "env" {
        Invocation::Env
    } else {
        Invocation::Other(name)
    }
}

/// In a Pod with `shareProcessNamespace: true` the container's process is not
/// PID 1 (the pause container is). It is then recognised by its parent being
/// outside the PID namespace (ppid 0, as for everything the runtime starts)
/// while no carrier holds the control port in this network namespace yet; a
/// later `kubectl exec` also has ppid 0 but finds the port taken.
fn main_process_of_shared_pid_namespace() -> bool {
    if std::os::unix::process::parent_id() != 0 {
        return false;
    }
    let control = std::env::var(proto::ENV_CARRIER_CONTROL_ADDR)
        .ok()
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .unwrap_or(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            proto::CARRIER_CONTROL_PORT,
        )));
    std::net::TcpListener::bind(control).is_ok()
}

/// The whole program; main.rs only calls this.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let pod_env = std::env::var(proto::ENV_CARRIER_POD).ok();
    let mut how = invocation(std::process::id(), pod_env.as_deref(), args.first());
    if matches!(how, Invocation::Other(_)) && main_process_of_shared_pid_namespace() {
        how = Invocation::Pod;
    }
    match how {
        Invocation::Env => print_env(&args[1..]),
        Invocation::Other(name) => {
            eprintln!(
                "{name}: this container is bridged by gefyra: its process was replaced by carrier, \
                 which forwards the container's ports to a developer's machine; `{name}` is not \
                 available here. Unbridge it (gefyra unbridge) to get the original container back."
            );
            ExitCode::from(EXIT_BRIDGED)
        }
        Invocation::Pod => {
            init_tracing();
            if args.len() > 1 {
                tracing::info!(args = ?&args[1..], "in-Pod mode; the container's command and args are ignored");
            }
            match PodFromEnv::try_parse_from(["carrier"]) {
                Ok(p) => run_pod(p.pod),
                Err(e) => usage_error(e),
            }
        }
        Invocation::Cli => match Cli::try_parse_from(&args) {
            Ok(cli) => {
                init_tracing();
                match cli.cmd {
                    Cmd::Forward(f) => run_forward(f),
                    Cmd::Pod(p) => run_pod(p),
                }
            }
            Err(e) => usage_error(e),
        },
    }
}

fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(proto::EXIT_CONFIG as u8),
    }
}

fn fail_config(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("carrier: {msg}");
    ExitCode::from(proto::EXIT_CONFIG as u8)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(proto::ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// env(1) as far as `--env-from` needs it: no arguments (or `-0`).
fn print_env(args: &[OsString]) -> ExitCode {
    use std::os::unix::ffi::OsStrExt;
    let sep = match args {
        [] => b'\n',
        [a] if a == "-0" || a == "--null" => 0u8,
        _ => {
            eprintln!(
                "env: this container is bridged by gefyra: only `env` without a command works here"
            );
            return ExitCode::from(EXIT_BRIDGED);
        }
    };
    let mut out = std::io::stdout().lock();
    for (k, v) in std::env::vars_os() {
        let mut line = Vec::with_capacity(k.len() + v.len() + 2);
        line.extend_from_slice(k.as_bytes());
        line.push(b'=');
        line.extend_from_slice(v.as_bytes());
        line.push(sep);
        if out.write_all(&line).is_err() {
            return ExitCode::FAILURE;
        }
    }
    match out.flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn conn_options(c: &Common, default_source: Option<IpAddr>) -> ConnOptions {
    ConnOptions {
        copy: if c.no_splice {
            CopyMode::Buffered
        } else {
            CopyMode::Splice
        },
        connect_timeout: c.connect_timeout,
        source_ip: c.source_ip.or(default_source),
    }
}

fn mappings(f: &ForwardArgs) -> Result<Vec<Mapping>, String> {
    if f.listen.len() != f.to.len() {
        return Err(format!(
            "{} --listen but {} --to: give them in pairs (or use --map LISTEN=TO)",
            f.listen.len(),
            f.to.len()
        ));
    }
    let mut out = Vec::new();
    let pairs = f
        .listen
        .iter()
        .map(|l| l.as_str())
        .zip(f.to.iter().map(|t| t.as_str()));
    let mut maps = Vec::new();
    for m in &f.map {
        let (l, t) = m
            .split_once('=')
            .ok_or_else(|| format!("--map `{m}`: expected LISTEN=TO"))?;
        maps.push((l, t));
    }
    for (l, t) in pairs.chain(maps) {
        let listen = parse_listen(l).map_err(|e| format!("listen {e}"))?;
        let to: Target = t.parse().map_err(|e| format!("target {e}"))?;
        out.push(Mapping { listen, to });
    }
    if out.is_empty() {
        return Err("no mapping: give --listen ADDR:PORT --to HOST:PORT or --map LISTEN=TO".into());
    }
    Ok(out)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run_forward(f: ForwardArgs) -> ExitCode {
    let maps = match mappings(&f) {
        Ok(m) => m,
        Err(e) => return fail_config(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail_config(format!("cannot start: {e}")),
    };
    let opts = ForwardOptions {
        max_connections: f.common.max_connections,
        grace: f.common.grace,
        conn: conn_options(&f.common, None),
    };
    rt.block_on(async move {
        let bound = match forward::bind(&maps) {
            Ok(b) => b,
            Err(e) => return fail_config(e),
        };
        forward::run(bound, opts, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn run_pod(p: PodArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail_config(format!("cannot start: {e}")),
    };
    let default_source = (!p.bind.is_unspecified()).then_some(p.bind);
    let opts = PodOptions {
        bind_ip: p.bind,
        max_connections: p.common.max_connections,
        grace: p.common.grace,
        conn: conn_options(&p.common, default_source),
    };
    rt.block_on(async move {
        let control = match forward::bind_listener(p.control) {
            Ok(l) => l,
            Err(e) => {
                return fail_config(format!(
                    "cannot listen on control address {}: {e}",
                    p.control
                ))
            }
        };
        pod::run(control, opts, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Each relayed connection holds two sockets and, with splice, two pipes:
/// lift the soft limit on open files to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(error = %e, "cannot raise the open files limit");
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT. (As PID 1 the kernel delivers no default
/// action for these, so carrier must handle them itself.)
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM"),
                _ = i.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; running until killed");
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocations() {
        let n = |s: &str| Some(OsString::from(s));
        assert_eq!(invocation(1, None, n("/bin/sh").as_ref()), Invocation::Pod);
        assert_eq!(invocation(7, Some("1"), n("sh").as_ref()), Invocation::Pod);
        assert_eq!(
            invocation(7, None, n("/usr/bin/carrier").as_ref()),
            Invocation::Cli
        );
        assert_eq!(
            invocation(7, None, n("/usr/bin/env").as_ref()),
            Invocation::Env
        );
        assert_eq!(
            invocation(7, Some("0"), n("/usr/local/bin/python3").as_ref()),
            Invocation::Other("python3".into())
        );
    }

    #[test]
    fn flags() {
        Cli::command_check();
        let cli = Cli::try_parse_from([
            "carrier",
            "forward",
            "--listen",
            "127.0.0.1:1",
            "--to",
            "h:2",
            "--map",
            "[::1]:3=[::1]:4",
        ])
        .unwrap();
        let Cmd::Forward(f) = cli.cmd else { panic!() };
        let m = mappings(&f).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].to, Target::Addr("[::1]:4".parse().unwrap()));
        let cli = Cli::try_parse_from(["carrier", "forward", "--listen", "127.0.0.1:1"]).unwrap();
        let Cmd::Forward(f) = cli.cmd else { panic!() };
        assert!(mappings(&f).is_err());
    }

    impl Cli {
        fn command_check() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
