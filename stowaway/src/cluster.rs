//! Cluster mode: watch the labelled client and bridge ConfigMaps in stowaway's
//! namespace and publish the desired peers and bridges.
//!
//! Stowaway keeps no state of its own: every (re)start lists the ConfigMaps,
//! and every change re-derives the full desired sets from the current objects.
//! A document that does not parse is logged and skipped; it never takes the
//! other peers or bridges down.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use proto::cluster::{BridgeSpec, ClientSpec, DATA_KEY};
use proto::config::PeerConfig;
use std::collections::{BTreeMap, HashSet};
use tokio::sync::watch;

/// The label selector of the ConfigMaps stowaway reacts to.
pub fn label_selector() -> String {
    format!(
        "{}={},{} in ({},{})",
        proto::LABEL_APP,
        proto::APP_NAME,
        proto::LABEL_ROLE,
        proto::ROLE_CLIENT,
        proto::ROLE_BRIDGE
    )
}

/// Watches ConfigMaps in `namespace` until the process ends, sending the full
/// desired sets on every change (a restart re-lists: no state is kept).
pub async fn watch(
    client: kube::Client,
    namespace: String,
    peers_tx: watch::Sender<Vec<PeerConfig>>,
    bridges_tx: watch::Sender<Vec<BridgeSpec>>,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&label_selector());
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();

    // name -> object; `init` buffers a (re)list until it is complete.
    let mut current: BTreeMap<String, ConfigMap> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, ConfigMap>> = None;

    tracing::info!(namespace = %namespace, "watching client and bridge ConfigMaps");
    while let Some(event) = stream.next().await {
        let changed = match event {
            Err(e) => {
                tracing::warn!(error = %e, "ConfigMap watch failed; retrying");
                false
            }
            Ok(Event::Init) => {
                init = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(cm)) => {
                init.get_or_insert_with(BTreeMap::new)
                    .insert(cm.name_any(), cm);
                false
            }
            Ok(Event::InitDone) => {
                current = init.take().unwrap_or_default();
                true
            }
            Ok(Event::Apply(cm)) => {
                current.insert(cm.name_any(), cm);
                true
            }
            Ok(Event::Delete(cm)) => {
                current.remove(&cm.name_any());
                true
            }
        };
        if changed {
            let (peers, bridges) = desired(current.values());
            publish(&peers_tx, peers, "peers");
            publish(&bridges_tx, bridges, "bridges");
        }
    }
    anyhow::bail!("the ConfigMap watch stream ended")
}

fn publish<T: PartialEq + std::fmt::Debug>(tx: &watch::Sender<Vec<T>>, value: Vec<T>, what: &str) {
    tx.send_if_modified(|old| {
        if *old == value {
            false
        } else {
            tracing::info!(count = value.len(), "desired {what} changed");
            *old = value;
            true
        }
    });
}

/// Derives the desired peers and bridges from the ConfigMaps (sorted by name).
/// Bad documents are logged and skipped.
pub fn desired<'a>(
    cms: impl IntoIterator<Item = &'a ConfigMap>,
) -> (Vec<PeerConfig>, Vec<BridgeSpec>) {
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut bridges: Vec<BridgeSpec> = Vec::new();
    let mut keys = HashSet::new();
    let mut ips = HashSet::new();
    let mut bridge_names = HashSet::new();
    for cm in cms {
        let name = cm.name_any();
        if cm.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let role = cm
            .labels()
            .get(proto::LABEL_ROLE)
            .map(String::as_str)
            .unwrap_or("");
        let Some(doc) = cm.data.as_ref().and_then(|d| d.get(DATA_KEY)) else {
            tracing::warn!(configmap = %name, "no {DATA_KEY} in ConfigMap; skipped");
            continue;
        };
        match role {
            r if r == proto::ROLE_CLIENT => match serde_json::from_str::<ClientSpec>(doc) {
                Ok(spec) => {
                    if name != proto::cluster::client_configmap_name(spec.tunnel_ip) {
                        tracing::warn!(configmap = %name, tunnel_ip = %spec.tunnel_ip,
                            "client ConfigMap name does not match its tunnel address; skipped");
                        continue;
                    }
                    if spec.tunnel_ip == proto::STOWAWAY_TUNNEL_IP || !in_tunnel_net(spec.tunnel_ip)
                    {
                        tracing::warn!(configmap = %name, tunnel_ip = %spec.tunnel_ip,
                            "client tunnel address outside the client range; skipped");
                        continue;
                    }
                    if !keys.insert(spec.public_key.clone()) || !ips.insert(spec.tunnel_ip) {
                        tracing::warn!(configmap = %name,
                            "public key or tunnel address already used by another client; skipped");
                        continue;
                    }
                    peers.push(PeerConfig {
                        name: spec.connection,
                        public_key: spec.public_key,
                        tunnel_ip: spec.tunnel_ip,
                        subnet: Some(spec.subnet),
                    });
                }
                Err(e) => {
                    tracing::warn!(configmap = %name, error = %e, "bad client document; skipped")
                }
            },
            r if r == proto::ROLE_BRIDGE => match serde_json::from_str::<BridgeSpec>(doc) {
                Ok(spec) => {
                    if !bridge_names.insert(spec.name.clone()) {
                        tracing::warn!(configmap = %name, bridge = %spec.name,
                            "bridge name already used by another ConfigMap; skipped");
                        continue;
                    }
                    bridges.push(spec);
                }
                Err(e) => {
                    tracing::warn!(configmap = %name, error = %e, "bad bridge document; skipped")
                }
            },
            other => {
                tracing::debug!(configmap = %name, role = other, "not a client or bridge; ignored")
            }
        }
    }
    (peers, bridges)
}

fn in_tunnel_net(ip: std::net::Ipv4Addr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(proto::TUNNEL_PREFIX))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(proto::TUNNEL_NET) & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proto::keys::Key;
    use std::net::Ipv4Addr;

    fn cm(name: &str, role: &str, doc: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        (proto::LABEL_APP.to_string(), proto::APP_NAME.to_string()),
                        (proto::LABEL_ROLE.to_string(), role.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(DATA_KEY.to_string(), doc.to_string())].into()),
            ..Default::default()
        }
    }

    fn client(n: u8, key: u8) -> ConfigMap {
        let ip = proto::client_tunnel_ip(n);
        let spec = ClientSpec {
            connection: format!("c{n}"),
            public_key: Key([key; 32]),
            tunnel_ip: ip,
            subnet: "172.30.0.0/24".parse().unwrap(),
        };
        cm(
            &proto::cluster::client_configmap_name(ip),
            proto::ROLE_CLIENT,
            &serde_json::to_string(&spec).unwrap(),
        )
    }

    #[test]
    fn clients_and_bridges_are_parsed_bad_ones_skipped() {
        let bridge = BridgeSpec {
            name: "b".into(),
            connection: "c2".into(),
            namespace: "ns".into(),
            container: "app".into(),
            pods: vec![],
            ports: vec![],
            local_ip: Ipv4Addr::new(172, 30, 0, 3),
            http_probe_ports: vec![],
        };
        let cms = vec![
            client(2, 1),
            client(3, 2),
            client(4, 1), // duplicate key
            cm(
                "gefyra-client-192-168-99-9",
                proto::ROLE_CLIENT,
                "{not json",
            ),
            cm(
                "gefyra-bridge-b",
                proto::ROLE_BRIDGE,
                &serde_json::to_string(&bridge).unwrap(),
            ),
            cm("gefyra-bridge-x", proto::ROLE_BRIDGE, r#"{"name":1}"#),
            cm("other", "stowaway", "{}"),
        ];
        let (peers, bridges) = desired(&cms);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].tunnel_ip, proto::client_tunnel_ip(2));
        assert_eq!(peers[0].name, "c2");
        assert_eq!(peers[1].tunnel_ip, proto::client_tunnel_ip(3));
        assert_eq!(bridges, vec![bridge]);
    }

    #[test]
    fn name_must_match_address() {
        let mut c = client(2, 1);
        c.metadata.name = Some("gefyra-client-192-168-99-7".into());
        let (peers, _) = desired([&c]);
        assert!(peers.is_empty());
    }

    #[test]
    fn selector() {
        assert_eq!(
            label_selector(),
            "gefyra.dev/app=gefyra,gefyra.dev/role in (client,bridge)"
        );
    }
}
