//! Config files of the binaries. Unknown fields are rejected so a typo is an
//! error naming the field, not a silently ignored setting.

use crate::keys::Key;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

/// One WireGuard client as stowaway knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Connection name (for logs and status).
    #[serde(default)]
    pub name: String,
    pub public_key: Key,
    /// The client's address in the tunnel subnet.
    pub tunnel_ip: Ipv4Addr,
    /// The client's local Docker subnet: dev containers' own addresses, routed
    /// back through this peer (bridged traffic goes to them).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
}

/// Stowaway's config file (JSON or YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StowawayConfig {
    pub private_key: Key,
    #[serde(default = "default_wg_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_health_listen")]
    pub health_listen: SocketAddr,
    #[serde(default = "default_stowaway_ip")]
    pub tunnel_ip: Ipv4Addr,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// DNS upstream for queries to `tunnel_ip:53`; default: /etc/resolv.conf's first nameserver.
    #[serde(default)]
    pub dns_upstream: Option<SocketAddr>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Bridges to apply (standalone mode; in the cluster they come from ConfigMaps).
    #[serde(default)]
    pub bridges: Vec<crate::cluster::BridgeSpec>,
    /// The address carriers reach stowaway's route ports at (its Pod IP).
    #[serde(default)]
    pub pod_ip: Option<Ipv4Addr>,
}

/// cargo-client's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CargoConfig {
    pub private_key: Key,
    /// Stowaway's public key.
    pub peer_public_key: Key,
    /// Stowaway's WireGuard endpoint (node address and NodePort, or a name).
    pub endpoint: String,
    /// This client's tunnel address.
    pub tunnel_ip: Ipv4Addr,
    #[serde(default = "default_tun_name")]
    pub tun_name: String,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Seconds between keepalives.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u16,
}

pub fn default_wg_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], crate::WIREGUARD_PORT))
}
pub fn default_health_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], crate::STOWAWAY_HEALTH_PORT))
}
pub fn default_stowaway_ip() -> Ipv4Addr {
    crate::STOWAWAY_TUNNEL_IP
}
pub fn default_mtu() -> u16 {
    crate::DEFAULT_MTU
}
pub fn default_tun_name() -> String {
    "gefyra0".to_string()
}
pub fn default_keepalive() -> u16 {
    10
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn unknown_field_is_named() {
        let k = Key([1; 32]).to_base64();
        let err = serde_json::from_str::<StowawayConfig>(&format!(
            r#"{{"private_key":"{k}","peerz":[]}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("peerz"), "{err}");
        let ok: StowawayConfig =
            serde_json::from_str(&format!(r#"{{"private_key":"{k}"}}"#)).unwrap();
        assert_eq!(ok.listen.port(), crate::WIREGUARD_PORT);
    }
}
