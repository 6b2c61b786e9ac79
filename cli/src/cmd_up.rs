//! `gefyra up`: cluster side (installed when missing, upgraded when older),
//! client registration, Docker network, cargo, handshake.

use crate::args::{self, HostPort};
use crate::manifests::{Install, ServiceType};
use crate::state::{self, ConnectionState};
use crate::{docker, k8s, ui, Global, Output};
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Namespace of the cluster side
    #[arg(long, default_value = proto::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// The WireGuard endpoint as this machine reaches it (default: the stowaway node's address and the NodePort)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub host: Option<HostPort>,
    /// NodePort of the WireGuard Service
    #[arg(long, default_value_t = proto::DEFAULT_NODE_PORT, value_parser = args::node_port)]
    pub port: u16,
    /// How the WireGuard Service is exposed
    #[arg(long, value_enum, default_value = "node-port")]
    pub service_type: ServiceType,
    /// Subnet of the local Docker network (default: a free /24 in 172.16.0.0/12)
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<Ipv4Net>,
    /// Registry the images come from (the kubelet pulls stowaway and carrier from it)
    #[arg(long, default_value = proto::DEFAULT_REGISTRY)]
    pub registry: String,
    /// Full image reference of stowaway (default: <registry>/gefyra-stowaway:<version>)
    #[arg(long)]
    pub stowaway_image: Option<String>,
    /// Full image reference of carrier (default: <registry>/gefyra-carrier:<version>)
    #[arg(long)]
    pub carrier_image: Option<String>,
    /// Full image reference of cargo (default: <registry>/gefyra-cargo:<version>)
    #[arg(long)]
    pub cargo_image: Option<String>,
    /// Seconds to wait for each step
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

impl UpArgs {
    pub fn image(&self, given: &Option<String>, name: &str) -> String {
        given
            .clone()
            .unwrap_or_else(|| proto::image_ref(&self.registry, name, proto::VERSION))
    }
}

/// What this run created (undone if it fails).
#[derive(Default)]
struct Undo {
    installed: k8s::Installed,
    network: Option<String>,
    configmap: Option<(String, String)>,
    container: Option<String>,
    key_dir: bool,
}

pub async fn up(g: &Global, a: UpArgs) -> Result<i32> {
    let cluster = k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await?;
    let d = docker::connect().await?;
    let mut undo = Undo::default();
    // Ctrl-C is a failure like any other: what this run created is removed
    let r = tokio::select! {
        r = up_inner(g, &a, &cluster, &d, &mut undo) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; run `gefyra up` again to connect")),
    };
    match r {
        Ok(code) => Ok(code),
        Err(e) => {
            ui::warn("`gefyra up` failed; removing what it created");
            if let Some(c) = &undo.container {
                let _ = docker::remove_container(&d, c).await;
            }
            if let Some((ns, cm)) = &undo.configmap {
                let _ = k8s::delete_configmap(&cluster, ns, cm).await;
            }
            if let Some(n) = &undo.network {
                let _ = docker::remove_network(&d, n).await;
            }
            k8s::rollback_install(&cluster, &a.namespace, &undo.installed).await;
            if undo.key_dir {
                let _ = state::remove(&g.connection);
            }
            Err(e)
        }
    }
}

async fn up_inner(
    g: &Global,
    a: &UpArgs,
    cluster: &k8s::Cluster,
    d: &bollard::Docker,
    undo: &mut Undo,
) -> Result<i32> {
    let conn = g.connection.as_str();
    let ns = a.namespace.as_str();
    let timeout = Duration::from_secs(a.timeout);
    let prev = state::load(conn)?;
    if let Some(p) = &prev {
        if p.namespace != ns {
            anyhow::bail!(
                "connection {conn} is up against namespace {}; run `gefyra down --connection {conn}` first or use another --connection",
                p.namespace
            );
        }
    }
    let had_dir = state::connection_dir(conn)?.exists();
    let (private, _) = state::load_or_create_key(conn)?;
    undo.key_dir = !had_dir;
    let public = state::public_of(&private);

    // cluster side
    let install = Install {
        namespace: ns.to_string(),
        stowaway_image: a.image(&a.stowaway_image, proto::IMAGE_STOWAWAY),
        service_type: a.service_type,
        node_port: a.port,
    };
    let r = k8s::install(cluster, &install, &mut undo.installed).await;
    r?;
    let installed_changed = undo.installed.changed();
    if undo.installed.created_namespace || !undo.installed.created.is_empty() {
        ui::info(format!("Installed the cluster side in namespace {ns}"));
    } else if let Some(v) = &undo.installed.upgraded_from {
        ui::info(format!(
            "Updated the cluster side in namespace {ns} (was {v}, now {})",
            proto::VERSION
        ));
    }
    let server_key = undo
        .installed
        .server_public_key
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no server key"))?;
    let pod = k8s::wait_stowaway_ready(cluster, ns, timeout).await?;

    // local network
    let want_subnet = a.subnet.or(prev.as_ref().map(|p| p.subnet));
    let (subnet, net_created) = match docker::ensure_network(d, conn, want_subnet).await {
        Ok(x) => x,
        // the remembered subnet is taken by now: pick a fresh one unless the user forced it
        Err(_) if a.subnet.is_none() && prev.is_some() => {
            docker::ensure_network(d, conn, None).await?
        }
        Err(e) => return Err(e),
    };
    if net_created {
        undo.network = Some(docker::network_name(conn));
        ui::info(format!(
            "Created Docker network {} ({subnet})",
            docker::network_name(conn)
        ));
    }
    let (gateway, cargo_ip, _) = docker::plan_subnet(subnet)?;

    // registration
    let mut registration = None;
    if let Some(p) = &prev {
        if k8s::client_registered(cluster, ns, &p.configmap, &public).await? {
            if p.subnet == subnet {
                registration = Some((p.tunnel_ip, p.configmap.clone()));
            } else {
                k8s::delete_configmap(cluster, ns, &p.configmap).await?;
            }
        }
    }
    let reg_changed = registration.is_none();
    let (tunnel_ip, configmap) = match registration {
        Some(r) => r,
        None => {
            let r = k8s::register_client(cluster, ns, conn, &public, subnet).await?;
            undo.configmap = Some((ns.to_string(), r.1.clone()));
            ui::info(format!("Registered this client as {} ({})", r.1, r.0));
            r
        }
    };

    // endpoint
    let endpoint = match &a.host {
        Some(h) => h.endpoint(match a.service_type {
            ServiceType::NodePort => a.port,
            ServiceType::LoadBalancer => proto::WIREGUARD_PORT,
        }),
        None => k8s::derive_endpoint(cluster, ns, a.service_type, &pod, gateway, timeout).await?,
    };

    // cargo
    let cargo_image = a.image(&a.cargo_image, proto::IMAGE_CARGO);
    let cargo = docker::cargo_name(conn);
    let cargo_cfg = proto::config::CargoConfig {
        private_key: private.clone(),
        peer_public_key: server_key.clone(),
        endpoint: endpoint.clone(),
        tunnel_ip,
        tun_name: proto::config::default_tun_name(),
        mtu: proto::DEFAULT_MTU,
        keepalive_secs: proto::config::default_keepalive(),
    };
    let new_state = ConnectionState {
        connection: conn.to_string(),
        namespace: ns.to_string(),
        tunnel_ip,
        configmap: configmap.clone(),
        network: docker::network_name(conn),
        subnet,
        cargo_ip,
        cargo_container: cargo.clone(),
        endpoint: endpoint.clone(),
        context: cluster.context.clone(),
        registry: a.registry.clone(),
        carrier_image: a.image(&a.carrier_image, proto::IMAGE_CARRIER),
        cargo_image: cargo_image.clone(),
        server_public_key: server_key.to_base64(),
    };
    let same_config = prev.as_ref().map(|p| {
        p.tunnel_ip == tunnel_ip
            && p.endpoint == endpoint
            && p.subnet == subnet
            && p.cargo_image == cargo_image
            && p.server_public_key == server_key.to_base64()
    }) == Some(true)
        && !reg_changed;
    let mut cargo_changed = false;
    match docker::container_running(d, &cargo).await? {
        Some(true) if same_config => {}
        Some(false) if same_config => {
            d.start_container(
                &cargo,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot start {cargo}: {}", docker::docker_message(&e)))?;
            cargo_changed = true;
        }
        existing => {
            if existing.is_some() {
                docker::remove_container(d, &cargo).await?;
            }
            docker::create_cargo(d, conn, &cargo_image, cargo_ip, &cargo_cfg).await?;
            undo.container = Some(cargo.clone());
            ui::info(format!("Started {cargo} ({cargo_ip}) dialing {endpoint}"));
            cargo_changed = true;
        }
    }
    let status = docker::wait_handshake(d, conn, timeout)
        .await
        .with_context(|| {
            format!(
                "no WireGuard handshake with stowaway at {endpoint}: check that this machine reaches it over UDP (firewall, NodePort) or pass --host HOST[:PORT]"
            )
        })?;
    state::save(&new_state)?;

    let changed =
        installed_changed || net_created || reg_changed || cargo_changed || prev.is_none();
    match g.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "changed": changed,
                "connection": conn,
                "namespace": ns,
                "tunnel_ip": tunnel_ip,
                "network": new_state.network,
                "subnet": subnet,
                "cargo_ip": cargo_ip,
                "endpoint": endpoint,
                "last_handshake_secs": status.last_handshake_secs,
            })
        ),
        Output::Text => {
            if changed {
                println!(
                    "gefyra is up: connection {conn}, tunnel {tunnel_ip}, network {} ({subnet}), endpoint {endpoint}",
                    new_state.network
                );
            } else {
                println!(
                    "gefyra is already up (connection {conn}, tunnel {tunnel_ip}, endpoint {endpoint}): nothing to do"
                );
            }
        }
    }
    Ok(0)
}
