//! Everything the CLI asks Docker (bollard, API version negotiated).

use crate::ui::{self, Wait};
use anyhow::{anyhow, bail, Context, Result};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam,
    IpamConfig, NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Where the `gefyra` binary is put inside containers (waiter and route helper).
pub const IN_CONTAINER_BIN: &str = "/.gefyra/gefyra";
/// Longest wait for an image pull.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Where cargo-client's config file is put in the cargo container.
pub const CARGO_CONFIG_PATH: &str = "/etc/gefyra/cargo.json";

pub async fn connect() -> Result<Docker> {
    let d = Docker::connect_with_local_defaults()
        .map_err(|e| anyhow!("cannot connect to Docker: {e}; is Docker running? (DOCKER_HOST)"))?;
    let d = tokio::time::timeout(Duration::from_secs(10), d.negotiate_version())
        .await
        .map_err(|_| anyhow!("Docker did not answer within 10s; is dockerd running?"))?
        .map_err(|e| anyhow!("cannot reach Docker: {e}; is Docker running and may you use it?"))?;
    Ok(d)
}

pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub fn docker_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub fn labels(role: &str, connection: &str) -> HashMap<String, String> {
    [
        (proto::LABEL_APP.to_string(), proto::APP_NAME.to_string()),
        (proto::LABEL_ROLE.to_string(), role.to_string()),
        (proto::LABEL_CONNECTION.to_string(), connection.to_string()),
    ]
    .into()
}

pub fn network_name(connection: &str) -> String {
    format!("gefyra-{connection}")
}

pub fn cargo_name(connection: &str) -> String {
    format!("gefyra-cargo-{connection}")
}

/// Addresses of a connection's network: gateway `.1`, cargo `.2`, dynamic range the upper half.
pub fn plan_subnet(subnet: Ipv4Net) -> Result<(Ipv4Addr, Ipv4Addr, Ipv4Net)> {
    if subnet.prefix_len() > 28 {
        bail!("--subnet {subnet} is too small: use a /28 or larger, e.g. 172.30.0.0/24");
    }
    let base = u32::from(subnet.network());
    let gateway = Ipv4Addr::from(base + 1);
    let cargo = Ipv4Addr::from(base + 2);
    let range = subnet
        .subnets(subnet.prefix_len() + 1)
        .ok()
        .and_then(|mut s| s.nth(1))
        .ok_or_else(|| anyhow!("cannot split {subnet}"))?;
    Ok((gateway, cargo, range))
}

/// Subnets in use: Docker networks and this host's routes.
async fn used_subnets(d: &Docker) -> Result<Vec<Ipv4Net>> {
    let mut used = Vec::new();
    for n in d
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await?
    {
        for c in n.ipam.and_then(|i| i.config).unwrap_or_default() {
            if let Some(s) = c.subnet.and_then(|s| s.parse::<Ipv4Net>().ok()) {
                used.push(s);
            }
        }
    }
    if let Ok(routes) = std::fs::read_to_string("/proc/net/route") {
        for line in routes.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[1] == "00000000" {
                continue;
            }
            let dst = u32::from_str_radix(f[1], 16).ok();
            let mask = u32::from_str_radix(f[7], 16).ok();
            if let (Some(dst), Some(mask)) = (dst, mask) {
                let dst = Ipv4Addr::from(dst.to_le_bytes());
                let prefix = mask.count_ones() as u8;
                if let Ok(n) = Ipv4Net::new(dst, prefix) {
                    used.push(n.trunc());
                }
            }
        }
    }
    used.push(Ipv4Net::new(proto::TUNNEL_NET, proto::TUNNEL_PREFIX)?);
    Ok(used)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first free /24 in 172.16.0.0/12 (from 172.30.0.0 up, then the rest).
pub fn pick_subnet(used: &[Ipv4Net]) -> Option<Ipv4Net> {
    let order = (30..=31).chain(16..=29);
    for second in order {
        for third in 0..=255u8 {
            let n = Ipv4Net::new(Ipv4Addr::new(172, second, third, 0), 24).ok()?;
            if !used.iter().any(|u| overlaps(u, &n)) {
                return Some(n);
            }
        }
    }
    None
}

/// Creates the connection's network (or finds it). Returns (subnet, created).
pub async fn ensure_network(
    d: &Docker,
    connection: &str,
    want: Option<Ipv4Net>,
) -> Result<(Ipv4Net, bool)> {
    let name = network_name(connection);
    match d
        .inspect_network(
            &name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
    {
        Ok(n) => {
            let subnet = n
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().find_map(|c| c.subnet))
                .and_then(|s| s.parse::<Ipv4Net>().ok())
                .ok_or_else(|| anyhow!("Docker network {name} has no IPv4 subnet; run `gefyra down --connection {connection}`"))?;
            if let Some(w) = want {
                if w != subnet {
                    bail!("Docker network {name} exists with subnet {subnet}, not {w}; run `gefyra down --connection {connection}` first");
                }
            }
            return Ok((subnet, false));
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(anyhow!("cannot inspect Docker network {name}: {e}")),
    }
    let used = used_subnets(d).await?;
    let subnet = match want {
        Some(w) => {
            if let Some(u) = used.iter().find(|u| overlaps(u, &w)) {
                bail!(
                    "--subnet {w} overlaps {u}, already used on this host; pick another --subnet"
                );
            }
            w
        }
        None => pick_subnet(&used)
            .ok_or_else(|| anyhow!("no free /24 in 172.16.0.0/12; pass --subnet"))?,
    };
    let (gateway, _, range) = plan_subnet(subnet)?;
    d.create_network(NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        labels: Some(labels(proto::ROLE_NETWORK, connection)),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.to_string()),
                ip_range: Some(range.to_string()),
                gateway: Some(gateway.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map_err(|e| {
        anyhow!(
            "cannot create Docker network {name} ({subnet}): {}; pass another --subnet",
            docker_message(&e)
        )
    })?;
    Ok((subnet, true))
}

/// Removes a network; containers still attached (e.g. joined by hand) are disconnected first.
pub async fn remove_network(d: &Docker, name: &str) -> Result<bool> {
    match d.remove_network(name).await {
        Ok(()) => return Ok(true),
        Err(e) if is_not_found(&e) => return Ok(false),
        Err(_) => {}
    }
    if let Ok(n) = d
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
    {
        for id in n.containers.unwrap_or_default().into_keys() {
            let _ = d
                .disconnect_network(
                    name,
                    bollard::models::NetworkDisconnectRequest {
                        container: id,
                        force: Some(true),
                    },
                )
                .await;
        }
    }
    match d.remove_network(name).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(anyhow!(
            "cannot remove Docker network {name}: {}; remove the containers attached to it and retry",
            docker_message(&e)
        )),
    }
}

/// Splits an image reference into (repository, tag) for a pull.
pub fn split_image(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_string(),
            image[last_slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// Uses the image if present locally, pulls it otherwise (as `docker run`).
pub async fn ensure_image(d: &Docker, image: &str) -> Result<bollard::models::ImageInspect> {
    if let Ok(i) = d.inspect_image(image).await {
        return Ok(i);
    }
    let (repo, tag) = split_image(image);
    ui::info(format!("Pulling {image}"));
    let opts = CreateImageOptionsBuilder::default()
        .from_image(&repo)
        .tag(&tag)
        .build();
    let mut s = d.create_image(Some(opts), None, None);
    let mut last = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + PULL_TIMEOUT;
    loop {
        let r = match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(_) => bail!(
                "pulling {image} did not finish within {}s; check the registry or pull it yourself first",
                PULL_TIMEOUT.as_secs()
            ),
        };
        match r {
            Ok(info) => {
                if last.elapsed() > Duration::from_secs(5) {
                    last = std::time::Instant::now();
                    ui::info(format!(
                        "  {}",
                        info.status.unwrap_or_else(|| "pulling".into())
                    ));
                }
            }
            Err(e) => bail!(
                "image {image} is neither local nor pullable: {}; check the name, the registry and `docker login`",
                crate::k8s::one_line(&docker_message(&e))
            ),
        }
    }
    d.inspect_image(image)
        .await
        .map_err(|e| anyhow!("image {image} was pulled but cannot be inspected: {e}"))
}

/// A tar archive with one file (and its directories).
pub fn tar_one(path_in_archive: &str, data: &[u8], mode: u32, uid: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let p = std::path::Path::new(path_in_archive);
    let mut dirs = Vec::new();
    let mut cur = p.parent();
    while let Some(dir) = cur {
        if dir.as_os_str().is_empty() {
            break;
        }
        dirs.push(dir.to_path_buf());
        cur = dir.parent();
    }
    for dir in dirs.iter().rev() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(0);
    b.append_data(&mut h, p, data)?;
    Ok(b.into_inner()?)
}

/// Copies one file into a (created, not yet started) container.
pub async fn upload(
    d: &Docker,
    container: &str,
    path: &str,
    data: &[u8],
    mode: u32,
    uid: u64,
) -> Result<()> {
    let rel = path.trim_start_matches('/');
    let tar = tar_one(rel, data, mode, uid)?;
    let opts = UploadToContainerOptionsBuilder::default().path("/").build();
    d.upload_to_container(container, Some(opts), bollard::body_full(tar.into()))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot copy {path} into {container}: {}",
                docker_message(&e)
            )
        })
}

/// The bytes of this very program (copied into containers as waiter and route helper).
pub fn own_binary() -> Result<Vec<u8>> {
    let exe = std::env::current_exe().context("cannot find the gefyra binary")?;
    std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))
}

pub async fn remove_container(d: &Docker, name: &str) -> Result<bool> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match d.remove_container(name, Some(opts)).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        // already being removed (auto-remove)
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(true),
        Err(e) => Err(anyhow!(
            "cannot remove container {name}: {}",
            docker_message(&e)
        )),
    }
}

/// Containers with the given labels (all states), kubelet-managed ones excluded.
pub async fn list_labelled(
    d: &Docker,
    label_filters: &[String],
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    filters.insert("label".into(), label_filters.to_vec());
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    // never a kubelet's container (a cluster on this Docker copies Pod labels onto them)
    Ok(d.list_containers(Some(opts))
        .await?
        .into_iter()
        .filter(|c| !is_kubelet_container(c))
        .collect())
}

/// Containers the kubelet (dockershim) created for Pods.
pub fn is_kubelet_container(c: &bollard::models::ContainerSummary) -> bool {
    c.labels
        .as_ref()
        .map(|l| l.keys().any(|k| k.starts_with("io.kubernetes.")))
        .unwrap_or(false)
}

pub async fn list_labelled_networks(
    d: &Docker,
    label_filters: &[String],
) -> Result<Vec<bollard::models::Network>> {
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    filters.insert("label".into(), label_filters.to_vec());
    let opts = ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    Ok(d.list_networks(Some(opts)).await?)
}

/// The cargo-client binary path in its image: its entrypoint, else `/cargo-client`.
pub fn entry_binary(image: &bollard::models::ImageInspect, fallback: &str) -> String {
    image
        .config
        .as_ref()
        .and_then(|c| c.entrypoint.as_ref())
        .and_then(|e| e.first().cloned())
        .unwrap_or_else(|| fallback.to_string())
}

/// Creates and starts the cargo container; `config` is written to [`CARGO_CONFIG_PATH`] before start.
pub async fn create_cargo(
    d: &Docker,
    connection: &str,
    image: &str,
    cargo_ip: Ipv4Addr,
    config: &proto::config::CargoConfig,
) -> Result<()> {
    let info = ensure_image(d, image).await?;
    let bin = entry_binary(&info, "/cargo-client");
    let name = cargo_name(connection);
    let network = network_name(connection);
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec![bin]),
        cmd: Some(vec!["--config".into(), CARGO_CONFIG_PATH.into()]),
        user: Some("0:0".into()),
        env: Some(vec![format!("{}=info", proto::ENV_LOG)]),
        labels: Some(labels(proto::ROLE_CARGO, connection)),
        host_config: Some(HostConfig {
            network_mode: Some(network.clone()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges".into()]),
            devices: Some(vec![DeviceMapping {
                path_on_host: Some("/dev/net/tun".into()),
                path_in_container: Some("/dev/net/tun".into()),
                cgroup_permissions: Some("rwm".into()),
            }]),
            sysctls: Some(
                [
                    ("net.ipv4.ip_forward".to_string(), "1".to_string()),
                    // dev containers' packets leave through the TUN: no redirects back
                    (
                        "net.ipv4.conf.all.send_redirects".to_string(),
                        "0".to_string(),
                    ),
                ]
                .into(),
            ),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(
                [(
                    network,
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(cargo_ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )]
                .into(),
            ),
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    d.create_container(Some(opts), body).await.map_err(|e| {
        anyhow!(
            "cannot create the cargo container {name}: {}",
            docker_message(&e)
        )
    })?;
    let json = serde_json::to_vec_pretty(config)?;
    upload(d, &name, CARGO_CONFIG_PATH, &json, 0o600, 0).await?;
    d.start_container(
        &name,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .map_err(|e| {
        anyhow!(
            "cannot start the cargo container {name}: {}",
            docker_message(&e)
        )
    })?;
    Ok(())
}

/// Runs a command in a container and returns (exit code, stdout, stderr).
pub async fn exec(d: &Docker, container: &str, cmd: Vec<String>) -> Result<(i64, String, String)> {
    let e = d
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut out = String::new();
    let mut err = String::new();
    if let StartExecResults::Attached { mut output, .. } = d.start_exec(&e.id, None).await? {
        while let Some(m) = output.next().await {
            match m? {
                bollard::container::LogOutput::StdOut { message } => {
                    out.push_str(&String::from_utf8_lossy(&message))
                }
                bollard::container::LogOutput::StdErr { message } => {
                    err.push_str(&String::from_utf8_lossy(&message))
                }
                _ => {}
            }
        }
    }
    let code = d.inspect_exec(&e.id).await?.exit_code.unwrap_or(-1);
    Ok((code, out, err))
}

/// `cargo-client status -o json` in the cargo container.
pub async fn cargo_status(
    d: &Docker,
    connection: &str,
) -> Result<(i64, Option<proto::status::CargoStatus>, String)> {
    let name = cargo_name(connection);
    let c = d
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| anyhow!("cargo container {name}: {}", docker_message(&e)))?;
    let bin = c
        .config
        .and_then(|c| c.entrypoint)
        .and_then(|e| e.into_iter().next())
        .unwrap_or_else(|| "/cargo-client".into());
    let (code, out, err) = tokio::time::timeout(
        Duration::from_secs(10),
        exec(
            d,
            &name,
            vec![bin, "status".into(), "-o".into(), "json".into()],
        ),
    )
    .await
    .map_err(|_| anyhow!("`cargo-client status` did not answer within 10s"))??;
    let parsed = serde_json::from_str::<proto::status::CargoStatus>(out.trim()).ok();
    Ok((code, parsed, err))
}

/// Whether the container is running, and its recent log when it is not.
pub async fn container_running(d: &Docker, name: &str) -> Result<Option<bool>> {
    match d
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(c) => Ok(Some(c.state.and_then(|s| s.running).unwrap_or(false))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(anyhow!("cannot inspect {name}: {}", docker_message(&e))),
    }
}

pub async fn tail_logs(d: &Docker, name: &str, lines: usize) -> String {
    let opts = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&lines.to_string())
        .build();
    let mut s = d.logs(name, Some(opts));
    let mut out = String::new();
    while let Some(Ok(m)) = s.next().await {
        out.push_str(&m.to_string());
    }
    out
}

/// Waits until `cargo-client status` reports a fresh handshake.
pub async fn wait_handshake(
    d: &Docker,
    connection: &str,
    timeout: Duration,
) -> Result<proto::status::CargoStatus> {
    let name = cargo_name(connection);
    // kube-proxy before v1.21 never clears conntrack entries of UDP NodePorts: packets cargo sent
    // before the NodePort's DNAT rule existed pin an un-NATed flow that cargo's own retries keep
    // alive, so the handshake never comes. Restarted once, cargo dials from a new source port.
    let t0 = std::time::Instant::now();
    let mut restart_once = true;
    ui::wait_for(
        "the WireGuard handshake with stowaway",
        timeout,
        Duration::from_millis(500),
        || {
            let name = name.clone();
            let restart = restart_once && t0.elapsed() >= Duration::from_secs(10);
            restart_once &= !restart;
            async move {
                if restart {
                    tracing::info!(container = %name, "no handshake after 10 s: restarting cargo (new UDP flow)");
                    let opts = bollard::query_parameters::RestartContainerOptions {
                        t: Some(1),
                        ..Default::default()
                    };
                    let _ = d.restart_container(&name, Some(opts)).await;
                }
                match container_running(d, &name).await? {
                    Some(true) => {}
                    Some(false) => {
                        let log = tail_logs(d, &name, 5).await;
                        bail!(
                            "the cargo container {name} stopped: {}; check --cargo-image and /dev/net/tun on this host",
                            crate::k8s::one_line(&log)
                        );
                    }
                    None => bail!("the cargo container {name} disappeared"),
                }
                match cargo_status(d, connection).await {
                    Ok((0, Some(s), _)) if s.fresh => Ok(Wait::Done(s)),
                    Ok((_, Some(s), _)) => Ok(Wait::NotYet(format!(
                        "handshake {}",
                        s.last_handshake_secs
                            .map(|a| format!("{a}s ago"))
                            .unwrap_or_else(|| "not yet".into())
                    ))),
                    Ok((code, None, err)) => Ok(Wait::NotYet(format!(
                        "status exit {code} {}",
                        crate::k8s::one_line(&err)
                    ))),
                    Err(e) => Ok(Wait::NotYet(e.to_string())),
                }
            }
        },
    )
    .await
}

/// A container's address on a network.
pub fn address_on(c: &bollard::models::ContainerSummary, network: &str) -> Option<String> {
    c.network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(network)?
        .ip_address
        .clone()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let used: Vec<Ipv4Net> = vec![
            "172.17.0.0/16".parse().unwrap(),
            "172.30.0.0/24".parse().unwrap(),
            "172.30.1.0/24".parse().unwrap(),
        ];
        assert_eq!(pick_subnet(&used).unwrap().to_string(), "172.30.2.0/24");
        let used: Vec<Ipv4Net> = vec!["172.16.0.0/12".parse().unwrap()];
        assert_eq!(pick_subnet(&used), None);
        let (gw, cargo, range) = plan_subnet("172.30.2.0/24".parse().unwrap()).unwrap();
        assert_eq!(gw, Ipv4Addr::new(172, 30, 2, 1));
        assert_eq!(cargo, Ipv4Addr::new(172, 30, 2, 2));
        assert_eq!(range.to_string(), "172.30.2.128/25");
        assert!(plan_subnet("10.0.0.0/30".parse().unwrap()).is_err());
    }

    #[test]
    fn image_refs() {
        assert_eq!(
            split_image("quay.io/gefyra/oauth2-demo"),
            ("quay.io/gefyra/oauth2-demo".into(), "latest".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/gefyra-cargo:0.1.0"),
            ("127.0.0.1:5000/gefyra-cargo".into(), "0.1.0".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x"),
            ("127.0.0.1:5000/x".into(), "latest".into())
        );
        assert_eq!(split_image("a@sha256:00"), ("a".into(), "sha256:00".into()));
    }

    #[test]
    fn tar_has_file_and_dirs() {
        let t = tar_one(".gefyra/gefyra", b"abc", 0o755, 0).unwrap();
        let mut a = tar::Archive::new(t.as_slice());
        let names: Vec<(String, u32)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![(".gefyra".into(), 0o755), (".gefyra/gefyra".into(), 0o755)]
        );
    }
}
