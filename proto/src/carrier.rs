//! The carrier <-> stowaway control protocol. Stowaway dials the carrier's
//! control port ([`crate::CARRIER_CONTROL_PORT`]) and sends newline-delimited
//! JSON messages; carrier answers each with a [`CarrierReply`]. Every message
//! carries the protocol version so a newer side can talk to an older one.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Current protocol version.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest accepted line (a message that does not fit is a protocol error).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// What carrier must listen on and where each connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// The container port carrier binds.
    pub port: u16,
    /// Where each accepted connection is forwarded (`<stowaway Pod IP>:<route port>`).
    pub forward: SocketAddr,
    /// Answer `User-Agent: kube-probe/...` HTTP requests locally with 200.
    #[serde(default)]
    pub http_probe: bool,
}

/// stowaway -> carrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StowawayMessage {
    /// The complete desired port map (replaces the previous one).
    Configure {
        version: u32,
        bridge: String,
        ports: Vec<PortForward>,
    },
    /// Liveness check on an idle link.
    Ping { version: u32 },
}

/// carrier -> stowaway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CarrierReply {
    /// The port map is applied; `listening` lists the ports bound.
    Configured {
        version: u32,
        listening: Vec<u16>,
    },
    Pong {
        version: u32,
    },
    /// A message was refused (does not parse, unknown version, a port cannot bind).
    Error {
        version: u32,
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn wire_format_is_stable() {
        let m = StowawayMessage::Configure {
            version: PROTOCOL_VERSION,
            bridge: "b".into(),
            ports: vec![PortForward {
                port: 8155,
                forward: "10.0.0.1:10000".parse().unwrap(),
                http_probe: true,
            }],
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"type":"configure","version":1,"bridge":"b","ports":[{"port":8155,"forward":"10.0.0.1:10000","http_probe":true}]}"#
        );
        assert_eq!(serde_json::from_str::<StowawayMessage>(&s).unwrap(), m);
    }
}
