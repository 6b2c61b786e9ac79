//! Status documents: stowaway's health endpoint (`GET /status`, JSON) and
//! cargo-client's status file / `cargo-client status -o json`. Readers tolerate
//! unknown fields so an older CLI can read a newer part.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: String,
    pub tunnel_ip: Option<Ipv4Addr>,
    /// Last seen UDP endpoint of the peer.
    pub endpoint: Option<String>,
    /// Seconds since the last completed handshake (None: never).
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// UDP datagrams that were not valid WireGuard for any peer (dropped, no reply).
    pub bad_packets: u64,
    /// Authenticated packets dropped: source outside the peer's addresses,
    /// not IPv4, fragments, or a full queue.
    pub dropped_packets: u64,
    pub tcp_flows_open: u64,
    pub tcp_flows_total: u64,
    pub udp_flows_open: u64,
    pub udp_flows_total: u64,
    pub dns_queries: u64,
    pub icmp_echo: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CarrierStatus {
    pub pod: String,
    pub ip: Option<Ipv4Addr>,
    /// The carrier acknowledged the current port map.
    pub configured: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeStatus {
    pub name: String,
    pub carriers: Vec<CarrierStatus>,
    /// Route ports stowaway listens on for this bridge.
    pub route_ports: Vec<u16>,
    /// Every route listener is open.
    pub routes_open: bool,
    /// The client's peer has a live session (the route to the local container is usable).
    pub peer_connected: bool,
    /// The local container's address the routes lead to.
    pub local_ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StowawayStatus {
    pub version: String,
    pub public_key: String,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    pub bridges: Vec<BridgeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CargoStatus {
    pub version: String,
    pub endpoint: String,
    pub tunnel_ip: Option<Ipv4Addr>,
    /// Seconds since the last completed handshake (None: never).
    pub last_handshake_secs: Option<u64>,
    /// The handshake is younger than [`crate::HANDSHAKE_FRESH_SECS`].
    pub fresh: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Datagrams from the endpoint that WireGuard rejected (stale session, replay, garbage).
    pub rx_errors: u64,
}
