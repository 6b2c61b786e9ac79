//! Bridge health for `list` and `status`: is every bridged Pod still running carrier, are there
//! Pods of the bridged workload that are not bridged (it scaled up or rolled out), and what
//! stowaway says about each carrier. Read-only.

use crate::k8s;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use proto::cluster::BridgeSpec;
use std::collections::BTreeSet;

fn selector_string(
    sel: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Option<String> {
    let s = sel?
        .match_labels?
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    (!s.is_empty()).then_some(s)
}

/// The workload owning `pod` (Deployment via its ReplicaSet, or StatefulSet): its name and the
/// label selector of all its Pods.
async fn owner_workload(c: &k8s::Cluster, ns: &str, pod: &Pod) -> Option<(String, String)> {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?
        .clone();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let rs = Api::<ReplicaSet>::namespaced(c.client.clone(), ns)
                .get_opt(&owner.name)
                .await
                .ok()??;
            let dep = rs
                .owner_references()
                .iter()
                .find(|o| o.kind == "Deployment")?
                .name
                .clone();
            let d = Api::<Deployment>::namespaced(c.client.clone(), ns)
                .get_opt(&dep)
                .await
                .ok()??;
            Some((
                format!("deployment/{dep}"),
                selector_string(d.spec.map(|s| s.selector))?,
            ))
        }
        "StatefulSet" => {
            let s = Api::<StatefulSet>::namespaced(c.client.clone(), ns)
                .get_opt(&owner.name)
                .await
                .ok()??;
            Some((
                format!("statefulset/{}", owner.name),
                selector_string(s.spec.map(|s| s.selector))?,
            ))
        }
        _ => None,
    }
}

fn runs_carrier(p: &Pod, container: &str) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .is_some_and(|c| {
            c.image.contains(proto::IMAGE_CARRIER)
                && c.state.as_ref().and_then(|s| s.running.as_ref()).is_some()
        })
}

/// `active`, or what is wrong with the bridge and what to do about it.
pub async fn bridge_state(c: &k8s::Cluster, spec: &BridgeSpec) -> String {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), &spec.namespace);
    let mut problems = Vec::new();
    let mut present: Vec<Pod> = Vec::new();
    for bp in &spec.pods {
        match pods.get_opt(&bp.name).await {
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_none() => {
                if !runs_carrier(&p, &spec.container) {
                    problems.push(format!("Pod {} does not run carrier (yet)", bp.name));
                }
                present.push(p);
            }
            Ok(_) => problems.push(format!("bridged Pod {} is gone", bp.name)),
            Err(e) => problems.push(format!(
                "cannot read Pod {}: {}",
                bp.name,
                k8s::one_line(&e.to_string())
            )),
        }
    }
    let bridged: BTreeSet<&str> = spec.pods.iter().map(|p| p.name.as_str()).collect();
    if let Some(first) = present.first() {
        if let Some((workload, sel)) = owner_workload(c, &spec.namespace, first).await {
            if let Ok(all) = pods.list(&ListParams::default().labels(&sel)).await {
                let extra: Vec<String> = all
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| p.name_any())
                    .filter(|n| !bridged.contains(n.as_str()))
                    .collect();
                if !extra.is_empty() {
                    problems.push(format!(
                        "{workload} has Pods that are not bridged ({}) and still get part of the traffic (it scaled up or rolled out): run `gefyra unbridge -I {}` and `gefyra bridge` again",
                        extra.join(", "),
                        spec.name
                    ));
                }
            }
        }
    } else if !spec.pods.is_empty() {
        problems.push(format!(
            "no bridged Pod is left (the workload rolled out?): run `gefyra unbridge -I {}` and `gefyra bridge` again",
            spec.name
        ));
    }
    if problems.is_empty() {
        "active".into()
    } else {
        problems.join("; ")
    }
}

/// Problems of the bridges in stowaway's namespace `sns`, for `status`: carriers stowaway has
/// not configured, bridges it does not serve, Pods of bridged workloads that are not bridged.
pub async fn bridge_problems(
    c: &k8s::Cluster,
    sns: &str,
    stowaway: Option<&proto::status::StowawayStatus>,
) -> Vec<String> {
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), sns);
    let sel = crate::cmd_bridge::bridge_selector();
    let list = match cms.list(&ListParams::default().labels(&sel)).await {
        Ok(l) => l.items,
        Err(e) => {
            return vec![format!(
                "cannot list bridges: {}",
                k8s::one_line(&e.to_string())
            )]
        }
    };
    let mut out = Vec::new();
    for cm in &list {
        let Some(spec) = cm
            .data
            .as_ref()
            .and_then(|d| d.get(proto::cluster::DATA_KEY))
            .and_then(|s| serde_json::from_str::<BridgeSpec>(s).ok())
        else {
            out.push(format!(
                "bridge ConfigMap {} is unreadable: run `gefyra unbridge -A`",
                cm.name_any()
            ));
            continue;
        };
        let state = bridge_state(c, &spec).await;
        if state != "active" {
            out.push(format!("bridge {}: {state}", spec.name));
        }
        if let Some(ss) = stowaway {
            match ss.bridges.iter().find(|b| b.name == spec.name) {
                None => out.push(format!(
                    "bridge {}: stowaway does not serve it (yet); check stowaway's log",
                    spec.name
                )),
                Some(b) => {
                    for cs in b.carriers.iter().filter(|cs| !cs.configured) {
                        out.push(format!(
                            "bridge {}: carrier in Pod {} is not connected{}",
                            spec.name,
                            cs.pod,
                            cs.error
                                .as_ref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        ));
                    }
                    if !b.routes_open {
                        out.push(format!(
                            "bridge {}: stowaway's route ports are not open",
                            spec.name
                        ));
                    }
                    if !b.peer_connected {
                        out.push(format!(
                            "bridge {}: the tunnel to the local container ({}) is down: is the cargo \
                             container of connection {} running? (`gefyra status`, or `gefyra up` again)",
                            spec.name, spec.local_ip, spec.connection
                        ));
                    }
                }
            }
        }
    }
    out
}

/// One line per bridge stowaway serves: carriers connected and route ports.
pub fn carrier_lines(ss: &proto::status::StowawayStatus) -> Vec<String> {
    ss.bridges
        .iter()
        .map(|b| {
            let ok = b.carriers.iter().filter(|c| c.configured).count();
            format!(
                "bridge {}: carriers connected {ok}/{} ({}), route ports {} {}, tunnel to the local container {}",
                b.name,
                b.carriers.len(),
                b.carriers
                    .iter()
                    .map(|c| format!(
                        "{} {}",
                        c.pod,
                        if c.configured {
                            "connected"
                        } else {
                            "NOT connected"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                b.route_ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                if b.routes_open { "open" } else { "NOT open" },
                if b.peer_connected { "up" } else { "DOWN" }
            )
        })
        .collect()
}
