//! `gefyra run`: a local container inside the cluster's network.
//!
//! How the container's route is in place before its process starts:
//! 1. the container is created with the `gefyra` binary copied in (Docker
//!    upload before start) and `__wait-route --via <cargo> -- <entrypoint+cmd>`
//!    as its entrypoint;
//! 2. it starts: the waiter blocks, polling `/proc/net/route`;
//! 3. a helper container from the cargo image (with the `gefyra` binary copied
//!    in) joins the dev container's network namespace with NET_ADMIN and runs
//!    `__set-route --via <cargo>`, then exits and is removed;
//! 4. the waiter sees the default route via cargo and `exec`s the real command
//!    (same PID, same signals, no leftover process).
//!
//! The dev container itself gets no extra capability and needs no `ip` tool.

use crate::args::{self, EnvFrom, EnvVar, PortMapping, Volume};
use crate::{docker, k8s, route, state, ui, Global, Output};
use anyhow::{anyhow, bail, Result};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The label with the namespace a dev container was started in.
pub const LABEL_NAMESPACE: &str = "gefyra.dev/namespace";

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The image to run (used if present locally, pulled otherwise)
    #[arg(short = 'i', long)]
    pub image: String,
    /// Name of the local container
    #[arg(short = 'N', long, value_parser = args::container_name)]
    pub name: Option<String>,
    /// The Kubernetes namespace the container behaves as if it ran in (DNS search domains)
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Bind mount SRC:DST[:ro]
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST")]
    pub volume: Vec<Volume>,
    /// The command to run (split like a shell does)
    #[arg(short = 'c', long = "command", value_name = "CMD")]
    pub command: Option<String>,
    /// Environment variable KEY=VALUE (overrides --env-from)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<EnvVar>,
    /// Copy the environment of a running container in the cluster: TYPE/NAME[/CONTAINER]
    #[arg(long, value_name = "TYPE/NAME[/CONTAINER]")]
    pub env_from: Option<EnvFrom>,
    /// Publish a container port on this machine: [IP:]HOST:CONTAINER
    #[arg(short = 'p', long = "expose", value_name = "[IP:]HOST:CONTAINER")]
    pub expose: Vec<PortMapping>,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run in the background (print the name and address, do not stream logs)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Seconds to wait for the container's route to be set
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WaitRouteArgs {
    #[arg(long)]
    pub via: Ipv4Addr,
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SetRouteArgs {
    #[arg(long)]
    pub via: Ipv4Addr,
}

pub fn wait_route(a: WaitRouteArgs) -> Result<i32> {
    route::wait_route_then_exec(a.via, Duration::from_secs(a.timeout), &a.cmd)?;
    Ok(127)
}

pub fn set_route(a: SetRouteArgs) -> Result<i32> {
    route::set_default_route(a.via)?;
    Ok(0)
}

/// Search domains of a Pod in `ns`.
pub fn dns_search(ns: &str) -> Vec<String> {
    vec![
        format!("{ns}.svc.cluster.local"),
        "svc.cluster.local".to_string(),
        "cluster.local".to_string(),
    ]
}

/// Merges the workload's env with `-e` (later wins), keeping first-seen order.
pub fn merge_env(from: Vec<(String, String)>, overrides: &[EnvVar]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut map: HashMap<String, String> = HashMap::new();
    for (k, v) in from {
        if !map.contains_key(&k) {
            order.push(k.clone());
        }
        map.insert(k, v);
    }
    for e in overrides {
        let v = match &e.value {
            Some(v) => v.clone(),
            None => match std::env::var(&e.key) {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        if !map.contains_key(&e.key) {
            order.push(e.key.clone());
        }
        map.insert(e.key.clone(), v);
    }
    order
        .into_iter()
        .filter_map(|k| map.get(&k).map(|v| format!("{k}={v}")))
        .collect()
}

/// Docker port bindings for `-p`.
pub fn port_bindings(
    ps: &[PortMapping],
) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in ps {
        let key = format!("{}/{}", p.container_port, p.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.map(|i| i.to_string()),
                host_port: Some(p.host_port.to_string()),
            });
    }
    (exposed, bindings)
}

pub async fn run(g: &Global, a: RunArgs) -> Result<i32> {
    let conn = g.connection.as_str();
    let st = state::load(conn)?.ok_or_else(|| {
        anyhow!("connection {conn} is not up: run `gefyra up` first (or pass --connection)")
    })?;
    let d = docker::connect().await?;
    match docker::container_running(&d, &st.cargo_container).await? {
        Some(true) => {}
        _ => bail!(
            "the cargo container {} is not running: run `gefyra up` again",
            st.cargo_container
        ),
    }
    if let Some(name) = &a.name {
        if docker::container_running(&d, name).await?.is_some() {
            bail!("a container named {name} already exists: choose another -N or remove it first");
        }
    }
    let cmd = match &a.command {
        Some(c) => Some(args::split_command(c).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let mut binds = Vec::new();
    for v in &a.volume {
        binds.push(v.bind().map_err(|e| anyhow!(e))?);
    }

    // the cluster first (fails before anything is created): the namespace must exist
    let cluster = k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await?;
    let ns_api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client.clone());
    if ns_api.get_opt(&a.namespace).await?.is_none() {
        bail!(
            "namespace {} does not exist in the cluster; check -n",
            a.namespace
        );
    }
    let from = match &a.env_from {
        Some(w) => {
            let env = k8s::workload_env(&cluster, &a.namespace, w).await?;
            ui::info(format!(
                "Copied {} variables from {}/{}",
                env.len(),
                w.kind,
                w.name
            ));
            env
        }
        None => Vec::new(),
    };
    let env = merge_env(from, &a.env);

    let image = docker::ensure_image(&d, &a.image).await?;
    let cargo_image = d
        .inspect_container(
            &st.cargo_container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?
        .image
        .ok_or_else(|| anyhow!("cannot tell the cargo container's image"))?;
    let img_cfg = image.config.clone().unwrap_or_default();
    let mut real: Vec<String> = img_cfg.entrypoint.clone().unwrap_or_default();
    match cmd {
        Some(c) => real.extend(c),
        None => real.extend(img_cfg.cmd.clone().unwrap_or_default()),
    }
    if real.is_empty() {
        bail!(
            "image {} has no entrypoint or command: pass -c \"CMD\"",
            a.image
        );
    }
    let mut entry = vec![
        docker::IN_CONTAINER_BIN.to_string(),
        "__wait-route".to_string(),
        "--via".to_string(),
        st.cargo_ip.to_string(),
        "--timeout".to_string(),
        (a.timeout + 30).to_string(),
        "--".to_string(),
    ];
    entry.extend(real);

    let (exposed, bindings) = port_bindings(&a.expose);
    let mut labels = docker::labels(proto::ROLE_DEV, conn);
    labels.insert(LABEL_NAMESPACE.to_string(), a.namespace.clone());
    let body = ContainerCreateBody {
        image: Some(a.image.clone()),
        entrypoint: Some(entry),
        cmd: Some(vec![]),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        tty: Some(false),
        host_config: Some(HostConfig {
            network_mode: Some(st.network.clone()),
            dns: Some(vec![proto::STOWAWAY_TUNNEL_IP.to_string()]),
            dns_search: Some(dns_search(&a.namespace)),
            dns_options: Some(vec!["ndots:5".to_string()]),
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            // attached: removed after its exit code is read (below)
            auto_remove: Some(a.rm && a.detach),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut opts = CreateContainerOptionsBuilder::default();
    if let Some(n) = &a.name {
        opts = opts.name(n);
    }
    let created = d
        .create_container(Some(opts.build()), body)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot create the container: {}",
                k8s::one_line(&docker::docker_message(&e))
            )
        })?;
    let id = created.id;
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| id.chars().take(12).collect());
    let r = start_with_route(
        &d,
        &id,
        &name,
        &st,
        &cargo_image,
        Duration::from_secs(a.timeout),
    )
    .await;
    let ip = match r {
        Ok(ip) => ip,
        Err(e) => {
            let _ = docker::remove_container(&d, &id).await;
            return Err(e);
        }
    };

    if a.detach {
        match g.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"name": name, "id": id, "address": ip, "network": st.network, "namespace": a.namespace})
            ),
            Output::Text => println!(
                "Container {name} runs in namespace {} with address {ip} on network {}",
                a.namespace, st.network
            ),
        }
        return Ok(0);
    }
    ui::info(format!(
        "Container {name} runs in namespace {} with address {ip}; Ctrl-C stops it",
        a.namespace
    ));
    let code = follow(&d, &id, &name).await;
    if a.rm {
        let _ = docker::remove_container(&d, &id).await;
    }
    code
}

async fn start_with_route(
    d: &Docker,
    id: &str,
    name: &str,
    st: &state::ConnectionState,
    cargo_image: &str,
    timeout: Duration,
) -> Result<String> {
    let bin = docker::own_binary()?;
    docker::upload(d, id, docker::IN_CONTAINER_BIN, &bin, 0o755, 0).await?;
    d.start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| {
            let m = docker::docker_message(&e);
            let hint = if m.contains("port is already allocated")
                || m.contains("address already in use")
            {
                "free that port or publish another with -p"
            } else {
                "check the flags and the image"
            };
            anyhow!("cannot start {name}: {}; {hint}", k8s::one_line(&m))
        })?;

    let ip = d
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()
        .and_then(|c| c.network_settings)
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&st.network).cloned())
        .and_then(|e| e.ip_address)
        .unwrap_or_default();

    // the helper: cargo image + gefyra binary, in the dev container's netns
    let helper_name = format!("gefyra-route-{}", &id[..12.min(id.len())]);
    let body = ContainerCreateBody {
        image: Some(cargo_image.to_string()),
        entrypoint: Some(vec![
            docker::IN_CONTAINER_BIN.to_string(),
            "__set-route".to_string(),
            "--via".to_string(),
            st.cargo_ip.to_string(),
        ]),
        cmd: Some(vec![]),
        user: Some("0:0".into()),
        labels: Some(docker::labels("route", &st.connection)),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{id}")),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = docker::remove_container(d, &helper_name).await;
    let opts = CreateContainerOptionsBuilder::default()
        .name(&helper_name)
        .build();
    d.create_container(Some(opts), body).await.map_err(|e| {
        anyhow!(
            "cannot create the route helper: {}",
            docker::docker_message(&e)
        )
    })?;
    let result = async {
        docker::upload(d, &helper_name, docker::IN_CONTAINER_BIN, &bin, 0o755, 0).await?;
        d.start_container(
            &helper_name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| {
            anyhow!(
                "cannot start the route helper: {}",
                docker::docker_message(&e)
            )
        })?;
        // the stream is lazy: created after start, "not-running" also covers an exit already done
        let mut wait = d.wait_container(
            &helper_name,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        let code = match tokio::time::timeout(timeout, wait.next()).await {
            Err(_) => bail!(
                "the route helper did not finish within {}s",
                timeout.as_secs()
            ),
            Ok(Some(Ok(r))) => r.status_code,
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
            Ok(Some(Err(e))) => bail!("waiting for the route helper: {e}"),
            Ok(None) => -1,
        };
        if code != 0 {
            let log = docker::tail_logs(d, &helper_name, 5).await;
            bail!(
                "could not set {name}'s route via cargo (exit {code}): {}",
                k8s::one_line(&log)
            );
        }
        Ok(())
    }
    .await;
    let _ = docker::remove_container(d, &helper_name).await;
    result?;
    // the waiter sees the route and execs the real command
    Ok(ip)
}

/// Streams the container's log until it exits; Ctrl-C stops it. Returns its exit code.
async fn follow(d: &Docker, id: &str, name: &str) -> Result<i32> {
    let mut wait = d.wait_container(
        id,
        Some(
            WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build(),
        ),
    );
    let logs_opts = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = d.logs(id, Some(logs_opts));
    let log_task = async {
        while let Some(m) = logs.next().await {
            match m {
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    let _ = std::io::stderr().write_all(&message);
                }
                Ok(other) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&other.into_bytes());
                    let _ = out.flush();
                }
                Err(_) => break,
            }
        }
    };
    let exit = async {
        match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            _ => 0,
        }
    };
    tokio::pin!(exit);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            ui::info(format!("Stopping {name}"));
            let _ = d
                .stop_container(id, Some(StopContainerOptionsBuilder::default().t(10).build()))
                .await;
            let code = tokio::time::timeout(Duration::from_secs(15), &mut exit).await.unwrap_or(130);
            Ok(i32::try_from(code).unwrap_or(1))
        }
        code = async {
            let (_, code) = tokio::join!(log_task, &mut exit);
            code
        } => Ok(i32::try_from(code).unwrap_or(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merge_overrides() {
        let from = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
        ];
        let over: Vec<EnvVar> = vec!["B=3".parse().unwrap(), "C=4".parse().unwrap()];
        assert_eq!(merge_env(from, &over), vec!["A=1", "B=3", "C=4"]);
    }

    #[test]
    fn ports_and_dns() {
        let ps: Vec<PortMapping> = vec![
            "8080:8155".parse().unwrap(),
            "127.0.0.1:5678:5678".parse().unwrap(),
        ];
        let (exposed, b) = port_bindings(&ps);
        assert_eq!(exposed, vec!["8155/tcp", "5678/tcp"]);
        let pb = b["5678/tcp"].as_ref().unwrap();
        assert_eq!(pb[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(pb[0].host_port.as_deref(), Some("5678"));
        assert_eq!(
            dns_search("oauth2-demo"),
            vec![
                "oauth2-demo.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }
}
