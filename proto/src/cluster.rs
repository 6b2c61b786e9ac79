//! Schemas of the ConfigMaps the CLI writes and stowaway watches. Each is the
//! JSON value under [`DATA_KEY`] of a ConfigMap labelled
//! `gefyra.dev/app=gefyra` and `gefyra.dev/role=client|bridge`.

use crate::keys::Key;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The data key holding the JSON document.
pub const DATA_KEY: &str = "spec.json";

/// ConfigMap name of a client registration: derived from the tunnel address, so
/// two clients racing for one address collide on create (AlreadyExists).
pub fn client_configmap_name(tunnel_ip: Ipv4Addr) -> String {
    format!("gefyra-client-{}", tunnel_ip.to_string().replace('.', "-"))
}

pub fn bridge_configmap_name(bridge: &str) -> String {
    format!("gefyra-bridge-{bridge}")
}

/// One client (connection) registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// Connection name on the client machine.
    pub connection: String,
    pub public_key: Key,
    pub tunnel_ip: Ipv4Addr,
    /// The client's local Docker network.
    pub subnet: Ipv4Net,
}

/// A bridged Pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgedPod {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// One port of a bridge: the container port in the cluster, the port of the
/// local container, and the stowaway route port that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgePort {
    pub remote: u16,
    pub local: u16,
    pub route_port: u16,
}

/// One bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    pub name: String,
    /// The connection (client) whose local container receives the traffic.
    pub connection: String,
    pub namespace: String,
    pub container: String,
    pub pods: Vec<BridgedPod>,
    pub ports: Vec<BridgePort>,
    /// The local container's address on the client's Docker network.
    pub local_ip: Ipv4Addr,
    /// Container ports with an httpGet probe (carrier answers kube-probe itself).
    #[serde(default)]
    pub http_probe_ports: Vec<u16>,
}
