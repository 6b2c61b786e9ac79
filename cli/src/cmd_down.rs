//! `gefyra down`: dev containers, cargo, the network and this client's
//! registration; `--all` also every local connection and the cluster side.

use crate::{docker, k8s, state, ui, Global, Output};
use anyhow::Result;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// Also remove the cluster side (namespace, stowaway, every client registration) and every local connection
    #[arg(long, short = 'A')]
    pub all: bool,
    /// Namespace of the cluster side (default: the one `up` used, else gefyra)
    #[arg(long)]
    pub namespace: Option<String>,
    /// Seconds to wait for the cluster side to be gone
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

pub async fn down(g: &Global, a: DownArgs) -> Result<i32> {
    let d = docker::connect().await?;
    let connections: Vec<String> = if a.all {
        let mut c = state::connections()?;
        if !c.contains(&g.connection) {
            c.push(g.connection.clone());
        }
        c
    } else {
        vec![g.connection.clone()]
    };
    let mut removed: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let cluster = k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await;
    let mut namespace = a.namespace.clone();

    // bridges first: their Pods get their original images back
    if let Ok(c) = &cluster {
        let ns = a.namespace.clone().unwrap_or_else(|| {
            state::load(&g.connection)
                .ok()
                .flatten()
                .map(|s| s.namespace)
                .unwrap_or_else(|| proto::DEFAULT_NAMESPACE.to_string())
        });
        let conn = if a.all {
            None
        } else {
            Some(g.connection.as_str())
        };
        match crate::cmd_bridge::unbridge_all(c, &ns, conn, None, Duration::from_secs(a.timeout))
            .await
        {
            Ok(names) => removed.extend(names.into_iter().map(|n| format!("bridge {n}"))),
            Err(e) => warnings.push(format!(
                "could not remove bridges: {e}; run `gefyra unbridge -A`"
            )),
        }
    }
    for conn in &connections {
        let st = state::load(conn)?;
        if namespace.is_none() {
            namespace = st.as_ref().map(|s| s.namespace.clone());
        }
        // containers of this connection: dev containers, route helpers, cargo
        let filter = vec![
            format!("{}={}", proto::LABEL_APP, proto::APP_NAME),
            format!("{}={}", proto::LABEL_CONNECTION, conn),
        ];
        for c in docker::list_labelled(&d, &filter).await? {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(c.id.clone())
                .unwrap_or_default();
            if docker::remove_container(&d, &name).await? {
                removed.push(format!("container {name}"));
            }
        }
        let net = docker::network_name(conn);
        if docker::remove_network(&d, &net).await? {
            removed.push(format!("network {net}"));
        }
        if let Some(s) = &st {
            if !a.all {
                match &cluster {
                    Ok(c) => {
                        if k8s::delete_configmap(c, &s.namespace, &s.configmap).await? {
                            removed.push(format!("registration {}", s.configmap));
                        }
                    }
                    Err(e) => warnings.push(format!(
                        "could not remove this client's registration {} ({e}); run `gefyra down` again when the cluster is reachable",
                        s.configmap
                    )),
                }
            }
        }
        // keep the state (and key) while the registration could not be removed, so a later
        // `gefyra down` still knows what to delete
        if warnings.is_empty() && (st.is_some() || state::connection_dir(conn)?.exists()) {
            state::remove(conn)?;
        }
    }
    if a.all {
        // anything else gefyra-labelled in Docker (e.g. a connection whose state is gone)
        // only what the CLI creates carries a connection label (Pods' containers do not)
        let filter = vec![
            format!("{}={}", proto::LABEL_APP, proto::APP_NAME),
            proto::LABEL_CONNECTION.to_string(),
        ];
        for c in docker::list_labelled(&d, &filter).await? {
            if let Some(id) = c.id.as_deref() {
                if docker::remove_container(&d, id).await? {
                    removed.push(format!(
                        "container {}",
                        c.names
                            .as_ref()
                            .and_then(|n| n.first())
                            .map(|n| n.trim_start_matches('/'))
                            .unwrap_or(id)
                    ));
                }
            }
        }
        for n in docker::list_labelled_networks(&d, &filter).await? {
            if let Some(name) = n.name.as_deref() {
                if docker::remove_network(&d, name).await? {
                    removed.push(format!("network {name}"));
                }
            }
        }
        let ns = namespace.unwrap_or_else(|| proto::DEFAULT_NAMESPACE.to_string());
        let c = cluster?;
        if k8s::uninstall(&c, &ns, Duration::from_secs(a.timeout)).await? {
            removed.push(format!("namespace {ns}"));
        }
    }
    for w in &warnings {
        ui::warn(w);
    }
    match g.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"removed": removed, "warnings": warnings})
        ),
        Output::Text => {
            if removed.is_empty() {
                println!("Nothing to remove: gefyra is down");
            } else {
                for r in &removed {
                    println!("Removed {r}");
                }
            }
        }
    }
    Ok(if warnings.is_empty() { 0 } else { 1 })
}
