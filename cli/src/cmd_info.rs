//! `list`, `status`, `check`, `version`.

use crate::cmd_run::LABEL_NAMESPACE;
use crate::{docker, k8s, state, ui, Global, Output};
use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct DevContainer {
    name: String,
    connection: String,
    namespace: String,
    address: Option<String>,
    image: String,
    state: String,
}

#[derive(Debug, Serialize)]
struct BridgeRow {
    name: String,
    connection: String,
    namespace: String,
    container: String,
    pods: Vec<String>,
    local_ip: String,
    ports: Vec<String>,
    /// `active`, or what is wrong and what to do (see bridge_info)
    state: String,
}

async fn dev_containers(d: &bollard::Docker) -> Result<Vec<DevContainer>> {
    let filter = vec![
        format!("{}={}", proto::LABEL_APP, proto::APP_NAME),
        format!("{}={}", proto::LABEL_ROLE, proto::ROLE_DEV),
    ];
    let mut out = Vec::new();
    for c in docker::list_labelled(d, &filter).await? {
        let labels = c.labels.clone().unwrap_or_default();
        let connection = labels
            .get(proto::LABEL_CONNECTION)
            .cloned()
            .unwrap_or_default();
        let network = docker::network_name(&connection);
        out.push(DevContainer {
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            namespace: labels.get(LABEL_NAMESPACE).cloned().unwrap_or_default(),
            address: docker::address_on(&c, &network),
            image: c.image.clone().unwrap_or_default(),
            state: c
                .state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            connection,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn bridges(c: &k8s::Cluster, ns: &str) -> Result<Vec<BridgeRow>> {
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
    let sel = crate::cmd_bridge::bridge_selector();
    let mut out = Vec::new();
    for cm in cms.list(&ListParams::default().labels(&sel)).await?.items {
        let Some(spec) = cm
            .data
            .as_ref()
            .and_then(|d| d.get(proto::cluster::DATA_KEY))
            .and_then(|s| serde_json::from_str::<proto::cluster::BridgeSpec>(s).ok())
        else {
            continue;
        };
        let state = crate::bridge_info::bridge_state(c, &spec).await;
        out.push(BridgeRow {
            state,
            name: spec.name,
            connection: spec.connection,
            namespace: spec.namespace,
            container: spec.container,
            pods: spec.pods.iter().map(|p| p.name.clone()).collect(),
            local_ip: spec.local_ip.to_string(),
            ports: spec
                .ports
                .iter()
                .map(|p| format!("{}:{}", p.remote, p.local))
                .collect(),
        });
    }
    Ok(out)
}

pub async fn list(g: &Global) -> Result<i32> {
    let d = docker::connect().await?;
    let devs = dev_containers(&d).await?;
    let ns = state::load(&g.connection)?
        .map(|s| s.namespace)
        .unwrap_or_else(|| proto::DEFAULT_NAMESPACE.to_string());
    let (brs, bridge_err) = match k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await
    {
        Ok(c) => match bridges(&c, &ns).await {
            Ok(b) => (b, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    match g.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"containers": devs, "bridges": brs, "bridges_error": bridge_err})
        ),
        Output::Text => {
            if devs.is_empty() {
                println!("No dev containers (start one with `gefyra run`)");
            } else {
                println!(
                    "{:<24} {:<16} {:<16} {:<12} {:<10} IMAGE",
                    "NAME", "ADDRESS", "NAMESPACE", "CONNECTION", "STATE"
                );
                for c in &devs {
                    println!(
                        "{:<24} {:<16} {:<16} {:<12} {:<10} {}",
                        c.name,
                        c.address.as_deref().unwrap_or("-"),
                        c.namespace,
                        c.connection,
                        c.state,
                        c.image
                    );
                }
            }
            if !brs.is_empty() {
                println!();
                println!(
                    "{:<20} {:<16} {:<24} {:<16} PORTS",
                    "BRIDGE", "NAMESPACE", "TARGET", "LOCAL"
                );
                for b in &brs {
                    println!(
                        "{:<20} {:<16} {:<24} {:<16} {}",
                        b.name,
                        b.namespace,
                        format!("{}/{}", b.pods.join(","), b.container),
                        b.local_ip,
                        b.ports.join(",")
                    );
                    println!("  state: {}", b.state);
                }
            }
            if let Some(e) = bridge_err {
                ui::warn(format!("bridges not listed: {e}"));
            }
        }
    }
    Ok(0)
}

#[derive(Debug, Default, Serialize)]
struct Status {
    connection: String,
    cluster: ClusterPart,
    client: ClientPart,
    cargo: CargoPart,
    stowaway: Option<proto::status::StowawayStatus>,
    dev_containers: usize,
    healthy: bool,
    problems: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct ClusterPart {
    reachable: bool,
    url: String,
    namespace: String,
    installed: bool,
    version: Option<String>,
    ready: bool,
    pod: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct ClientPart {
    up: bool,
    registered: bool,
    tunnel_ip: Option<String>,
    network: Option<String>,
    subnet: Option<String>,
    endpoint: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct CargoPart {
    running: bool,
    last_handshake_secs: Option<u64>,
    fresh: bool,
    rx_bytes: u64,
    tx_bytes: u64,
}

pub async fn status(g: &Global) -> Result<i32> {
    let conn = g.connection.clone();
    let st = state::load(&conn)?;
    let mut s = Status {
        connection: conn.clone(),
        ..Default::default()
    };
    let ns = st
        .as_ref()
        .map(|s| s.namespace.clone())
        .unwrap_or_else(|| proto::DEFAULT_NAMESPACE.to_string());
    s.cluster.namespace = ns.clone();
    match k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await {
        Err(e) => s.problems.push(e.to_string()),
        Ok(c) => {
            s.cluster.reachable = true;
            s.cluster.url = c.url.clone();
            let deps: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);
            match deps.get_opt(proto::STOWAWAY_NAME).await {
                Ok(Some(dep)) => {
                    s.cluster.installed = true;
                    s.cluster.version = k8s::installed_version(&dep);
                    if s.cluster.version.as_deref() != Some(proto::VERSION) {
                        s.problems.push(format!(
                            "the cluster side is version {}, this CLI {}: run `gefyra up` to update it",
                            s.cluster.version.as_deref().unwrap_or("unknown"),
                            proto::VERSION
                        ));
                    }
                }
                Ok(None) => s.problems.push(format!(
                    "gefyra is not installed in namespace {ns}: run `gefyra up`"
                )),
                Err(e) => s
                    .problems
                    .push(format!("cannot read the stowaway Deployment: {e}")),
            }
            if s.cluster.installed {
                match k8s::stowaway_pod(&c, &ns).await {
                    Ok(Some(p)) => {
                        s.cluster.ready = true;
                        s.cluster.pod = Some(p.name.clone());
                        match k8s::stowaway_status(&c, &ns, &p.name).await {
                            Ok(ss) => s.stowaway = Some(ss),
                            Err(e) => s.problems.push(format!("stowaway /status: {e}")),
                        }
                    }
                    Ok(None) => s.problems.push("stowaway has no ready Pod".into()),
                    Err(e) => s.problems.push(format!("cannot list stowaway Pods: {e}")),
                }
            }
            if s.cluster.installed {
                let bp = crate::bridge_info::bridge_problems(&c, &ns, s.stowaway.as_ref()).await;
                s.problems.extend(bp);
            }
            if let Some(stt) = &st {
                let public = state::load_or_create_key(&conn)
                    .map(|(k, _)| state::public_of(&k))
                    .ok();
                if let Some(public) = public {
                    s.client.registered = k8s::client_registered(&c, &ns, &stt.configmap, &public)
                        .await
                        .unwrap_or(false);
                    if !s.client.registered {
                        s.problems.push(format!(
                            "this client is not registered ({} missing): run `gefyra up`",
                            stt.configmap
                        ));
                    }
                }
            }
        }
    }
    if let Some(stt) = &st {
        s.client.up = true;
        s.client.tunnel_ip = Some(stt.tunnel_ip.to_string());
        s.client.network = Some(stt.network.clone());
        s.client.subnet = Some(stt.subnet.to_string());
        s.client.endpoint = Some(stt.endpoint.clone());
    } else {
        s.problems
            .push(format!("connection {conn} is not up: run `gefyra up`"));
    }
    match docker::connect().await {
        Err(e) => s.problems.push(e.to_string()),
        Ok(d) => {
            if st.is_some() {
                match docker::container_running(&d, &docker::cargo_name(&conn)).await {
                    Ok(Some(true)) => {
                        s.cargo.running = true;
                        match docker::cargo_status(&d, &conn).await {
                            Ok((_, Some(cs), _)) => {
                                s.cargo.last_handshake_secs = cs.last_handshake_secs;
                                s.cargo.fresh = cs.fresh;
                                s.cargo.rx_bytes = cs.rx_bytes;
                                s.cargo.tx_bytes = cs.tx_bytes;
                                if !cs.fresh {
                                    s.problems.push("the tunnel has no fresh handshake: check that this machine reaches the endpoint (UDP)".into());
                                }
                            }
                            Ok((code, None, err)) => s.problems.push(format!(
                                "cargo-client status failed (exit {code}): {}",
                                k8s::one_line(&err)
                            )),
                            Err(e) => s.problems.push(e.to_string()),
                        }
                    }
                    Ok(_) => s
                        .problems
                        .push("the cargo container is not running: run `gefyra up`".into()),
                    Err(e) => s.problems.push(e.to_string()),
                }
            }
            s.dev_containers = dev_containers(&d)
                .await
                .map(|v| v.iter().filter(|c| c.connection == conn).count())
                .unwrap_or(0);
        }
    }
    s.healthy = s.problems.is_empty();
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Text => print_status(&s),
    }
    Ok(if s.healthy { 0 } else { 1 })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_status(s: &Status) {
    println!("Connection:      {}", s.connection);
    println!(
        "Cluster:         {} (reachable: {})",
        if s.cluster.url.is_empty() {
            "-"
        } else {
            &s.cluster.url
        },
        yes(s.cluster.reachable)
    );
    println!(
        "Stowaway:        namespace {}, installed: {}, version: {}, ready: {}{}",
        s.cluster.namespace,
        yes(s.cluster.installed),
        s.cluster.version.as_deref().unwrap_or("-"),
        yes(s.cluster.ready),
        s.cluster
            .pod
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    );
    if let Some(ss) = &s.stowaway {
        println!(
            "  peers:         {} ({})",
            ss.peers.len(),
            ss.peers
                .iter()
                .map(|p| format!(
                    "{} {} handshake {}",
                    p.name,
                    p.tunnel_ip.map(|i| i.to_string()).unwrap_or_default(),
                    p.last_handshake_secs
                        .map(|a| format!("{} ago", ui::age(a)))
                        .unwrap_or_else(|| "never".into())
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        println!(
            "  flows:         tcp {} open / {} total, udp {} open, dns {}",
            ss.counters.tcp_flows_open,
            ss.counters.tcp_flows_total,
            ss.counters.udp_flows_open,
            ss.counters.dns_queries
        );
        for l in crate::bridge_info::carrier_lines(ss) {
            println!("  {l}");
        }
    }
    println!(
        "Client:          up: {}, registered: {}, tunnel {}, network {} ({}), endpoint {}",
        yes(s.client.up),
        yes(s.client.registered),
        s.client.tunnel_ip.as_deref().unwrap_or("-"),
        s.client.network.as_deref().unwrap_or("-"),
        s.client.subnet.as_deref().unwrap_or("-"),
        s.client.endpoint.as_deref().unwrap_or("-")
    );
    println!(
        "Cargo:           running: {}, handshake: {}, rx {} B, tx {} B",
        yes(s.cargo.running),
        s.cargo
            .last_handshake_secs
            .map(|a| format!(
                "{} ago{}",
                ui::age(a),
                if s.cargo.fresh { "" } else { " (stale)" }
            ))
            .unwrap_or_else(|| "never".into()),
        s.cargo.rx_bytes,
        s.cargo.tx_bytes
    );
    println!("Dev containers:  {}", s.dev_containers);
    if s.healthy {
        println!("Healthy");
    } else {
        for p in &s.problems {
            println!("Problem: {p}");
        }
    }
}

#[derive(Debug, Serialize)]
struct CheckRow {
    check: String,
    ok: bool,
    detail: String,
}

pub async fn check(g: &Global) -> Result<i32> {
    let mut rows: Vec<CheckRow> = Vec::new();
    let mut add = |check: &str, ok: bool, detail: String| {
        rows.push(CheckRow {
            check: check.to_string(),
            ok,
            detail,
        })
    };
    match docker::connect().await {
        Ok(d) => match d.version().await {
            Ok(v) => add(
                "docker",
                true,
                format!(
                    "Docker {} (API {})",
                    v.version.unwrap_or_default(),
                    v.api_version.unwrap_or_default()
                ),
            ),
            Err(e) => add("docker", false, e.to_string()),
        },
        Err(e) => add("docker", false, e.to_string()),
    }
    add(
        "tun",
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun (cargo needs it)".into(),
    );
    let ns = state::load(&g.connection)
        .ok()
        .flatten()
        .map(|s| s.namespace)
        .unwrap_or_else(|| proto::DEFAULT_NAMESPACE.to_string());
    match k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await {
        Err(e) => add("cluster", false, e.to_string()),
        Ok(c) => {
            let v = c
                .client
                .apiserver_version()
                .await
                .map(|v| v.git_version)
                .unwrap_or_default();
            add("cluster", true, format!("{} ({v})", c.url));
            let wanted: &[(&str, &str, &str, Option<&str>, bool)] = &[
                ("create", "", "namespaces", None, false),
                ("create", "apps", "deployments", None, true),
                ("create", "", "services", None, true),
                ("create", "", "secrets", None, true),
                ("create", "", "serviceaccounts", None, true),
                ("create", "rbac.authorization.k8s.io", "roles", None, true),
                (
                    "create",
                    "rbac.authorization.k8s.io",
                    "rolebindings",
                    None,
                    true,
                ),
                ("create", "", "configmaps", None, true),
                ("delete", "", "configmaps", None, true),
                ("create", "", "pods", Some("portforward"), true),
                ("create", "", "pods", Some("exec"), false),
                ("patch", "", "pods", None, false),
            ];
            let mut missing = Vec::new();
            for (verb, group, res, sub, in_ns) in wanted {
                let target_ns = if *in_ns { Some(ns.as_str()) } else { None };
                match k8s::can_i(&c, verb, group, res, *sub, target_ns).await {
                    Ok(true) => {}
                    Ok(false) => missing.push(format!(
                        "{verb} {res}{}",
                        sub.map(|s| format!("/{s}")).unwrap_or_default()
                    )),
                    Err(e) => missing.push(format!("{verb} {res}: {e}")),
                }
            }
            add(
                "permissions",
                missing.is_empty(),
                if missing.is_empty() {
                    "may install gefyra, register, exec, port-forward and bridge".into()
                } else {
                    format!("missing: {} (ask a cluster admin)", missing.join(", "))
                },
            );
            let deps: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);
            match deps.get_opt(proto::STOWAWAY_NAME).await {
                Ok(Some(d)) => {
                    let v = k8s::installed_version(&d).unwrap_or_else(|| "unknown".into());
                    add(
                        "versions",
                        v == proto::VERSION,
                        if v == proto::VERSION {
                            format!("cluster side {v} matches the CLI")
                        } else {
                            format!(
                                "cluster side {v}, CLI {}: run `gefyra up` to update",
                                proto::VERSION
                            )
                        },
                    );
                }
                Ok(None) => add(
                    "versions",
                    true,
                    format!("not installed in namespace {ns} (`gefyra up` installs it)"),
                ),
                Err(e) => add("versions", false, e.to_string()),
            }
        }
    }
    let ok = rows.iter().all(|r| r.ok);
    match g.output {
        Output::Json => println!("{}", serde_json::json!({"ok": ok, "checks": rows})),
        Output::Text => {
            for r in &rows {
                println!(
                    "[{}] {:<12} {}",
                    if r.ok { " ok " } else { "FAIL" },
                    r.check,
                    r.detail
                );
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

pub async fn version(g: &Global) -> Result<i32> {
    match g.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "version": proto::VERSION,
                "carrier_protocol": proto::carrier::PROTOCOL_VERSION,
            })
        ),
        Output::Text => println!("gefyra {}", proto::VERSION),
    }
    Ok(0)
}
