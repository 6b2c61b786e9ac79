//! Typed contracts between gefyra's parts: constants (ports, subnets, labels,
//! image names), the config schemas the parts read, the ConfigMap schemas the
//! CLI writes and stowaway watches, and the versioned carrier <-> stowaway
//! messages. Declared once here and used by every side.
#![forbid(unsafe_code)]

pub mod carrier;
pub mod cluster;
pub mod config;
pub mod keys;
pub mod status;

use std::net::Ipv4Addr;

/// The workspace version; images are tagged with it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------- network

/// The WireGuard tunnel subnet. Stowaway is `.1`, clients are allocated from `.2` up.
pub const TUNNEL_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 0);
pub const TUNNEL_PREFIX: u8 = 24;
/// Stowaway's tunnel address: also the DNS address dev containers use.
pub const STOWAWAY_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 1);
/// Default MTU of the tunnel (1500 minus IPv4/UDP/WireGuard overhead).
pub const DEFAULT_MTU: u16 = 1420;
/// WireGuard UDP port stowaway listens on inside its Pod.
pub const WIREGUARD_PORT: u16 = 51820;
/// Default NodePort of the WireGuard Service.
pub const DEFAULT_NODE_PORT: u16 = 31820;
/// Stowaway's HTTP health/status port.
pub const STOWAWAY_HEALTH_PORT: u16 = 8090;
/// The control port carrier listens on in a bridged Pod; stowaway dials it.
/// The CLI refuses to bridge a container that declares this port.
pub const CARRIER_CONTROL_PORT: u16 = 8901;
/// First route port stowaway opens for bridged traffic (one per bridged port).
pub const ROUTE_PORT_BASE: u16 = 10000;
/// Where cargo-client writes its status (the CLI reads it with `cargo-client status`).
pub const CARGO_STATUS_FILE: &str = "/run/gefyra-cargo/status.json";
/// A handshake older than this is stale (WireGuard rekeys every 120 s; with
/// keepalives a live session always has a handshake younger than 180 s).
pub const HANDSHAKE_FRESH_SECS: u64 = 180;

/// The n-th client address in the tunnel subnet (n >= 2; .1 is stowaway).
pub fn client_tunnel_ip(n: u8) -> Ipv4Addr {
    let o = TUNNEL_NET.octets();
    Ipv4Addr::new(o[0], o[1], o[2], n)
}

// ---------------------------------------------------------------- labels

/// Every object gefyra creates carries this label (value: the part or role).
pub const LABEL_APP: &str = "gefyra.dev/app";
/// `client` | `bridge` | `stowaway` | `cargo` | `dev` | `network`.
pub const LABEL_ROLE: &str = "gefyra.dev/role";
/// The connection (client) name an object belongs to.
pub const LABEL_CONNECTION: &str = "gefyra.dev/connection";
/// The bridge name (on bridge ConfigMaps and bridged Pods).
pub const LABEL_BRIDGE: &str = "gefyra.dev/bridge";
/// The value of [`LABEL_APP`].
pub const APP_NAME: &str = "gefyra";
/// Installed version of the cluster side (on the stowaway Deployment).
pub const ANNOTATION_VERSION: &str = "gefyra.dev/version";
/// Prefix of the Pod annotation that keeps a bridged container's original image:
/// `gefyra.dev/original-image.<container>`.
pub const ANNOTATION_ORIGINAL_IMAGE_PREFIX: &str = "gefyra.dev/original-image.";

pub const ROLE_CLIENT: &str = "client";
pub const ROLE_BRIDGE: &str = "bridge";
pub const ROLE_STOWAWAY: &str = "stowaway";
pub const ROLE_CARGO: &str = "cargo";
pub const ROLE_DEV: &str = "dev";
pub const ROLE_NETWORK: &str = "network";

pub fn original_image_annotation(container: &str) -> String {
    format!("{ANNOTATION_ORIGINAL_IMAGE_PREFIX}{container}")
}

// ---------------------------------------------------------------- cluster objects

pub const DEFAULT_NAMESPACE: &str = "gefyra";
pub const STOWAWAY_NAME: &str = "gefyra-stowaway";
pub const STOWAWAY_SERVICE: &str = "gefyra-stowaway-wireguard";
pub const STOWAWAY_SECRET: &str = "gefyra-stowaway-key";
pub const STOWAWAY_SERVICE_ACCOUNT: &str = "gefyra-stowaway";
pub const STOWAWAY_ROLE: &str = "gefyra-stowaway";
/// Key in the stowaway Secret holding the base64 server private key.
pub const SECRET_PRIVATE_KEY: &str = "private-key";
/// Key in the stowaway Secret holding the base64 server public key.
pub const SECRET_PUBLIC_KEY: &str = "public-key";

// ---------------------------------------------------------------- env names

/// Stowaway: path of its config file (standalone mode).
pub const ENV_STOWAWAY_CONFIG: &str = "GEFYRA_STOWAWAY_CONFIG";
/// Stowaway: namespace to watch for client/bridge ConfigMaps (cluster mode).
pub const ENV_STOWAWAY_NAMESPACE: &str = "GEFYRA_NAMESPACE";
/// Stowaway: its private key (base64), from the Secret (cluster mode).
pub const ENV_STOWAWAY_PRIVATE_KEY: &str = "GEFYRA_PRIVATE_KEY";
/// Stowaway: its own Pod IP (downward API), used in `forward` addresses sent to carriers.
pub const ENV_POD_IP: &str = "GEFYRA_POD_IP";
/// Stowaway: override of the DNS upstream (default: first nameserver of /etc/resolv.conf).
pub const ENV_DNS_UPSTREAM: &str = "GEFYRA_DNS_UPSTREAM";
/// Log filter for every binary (tracing EnvFilter syntax).
pub const ENV_LOG: &str = "GEFYRA_LOG";
/// Stowaway: the port it dials carriers on (default [`CARRIER_CONTROL_PORT`];
/// set by loopback tests where several carriers share a host).
pub const ENV_CARRIER_CONTROL_PORT: &str = "GEFYRA_CARRIER_CONTROL_PORT";
/// Carrier: run in-Pod mode even when not PID 1 (`1`; tests).
pub const ENV_CARRIER_POD: &str = "GEFYRA_CARRIER_POD";
/// Carrier (in-Pod mode): control listen address (default `0.0.0.0:8901`).
pub const ENV_CARRIER_CONTROL_ADDR: &str = "GEFYRA_CARRIER_CONTROL_ADDR";
/// Carrier (in-Pod mode): address the container ports are bound on (default `0.0.0.0`).
pub const ENV_CARRIER_BIND_IP: &str = "GEFYRA_CARRIER_BIND_IP";

// ---------------------------------------------------------------- images

pub const IMAGE_STOWAWAY: &str = "gefyra-stowaway";
pub const IMAGE_CARRIER: &str = "gefyra-carrier";
pub const IMAGE_CARGO: &str = "gefyra-cargo";
/// Default registry prefix when none is given.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:5000";
/// Numeric non-root user the images run as.
pub const IMAGE_UID: u32 = 65532;

/// `<registry>/<name>:<version>`; an empty registry gives `<name>:<version>`.
pub fn image_ref(registry: &str, name: &str, version: &str) -> String {
    let registry = registry.trim_end_matches('/');
    if registry.is_empty() {
        format!("{name}:{version}")
    } else {
        format!("{registry}/{name}:{version}")
    }
}

/// Exit code for bad usage or configuration (EX_USAGE / EX_CONFIG style).
pub const EXIT_CONFIG: i32 = 64;

/// Directories of the carrier image where [`CARRIER_COMMAND_NAMES`] exist (symlinks to carrier).
pub const CARRIER_COMMAND_DIRS: &[&str] = &["/bin", "/usr/bin", "/usr/local/bin"];
/// Program names a bridged container's `command` may start with: the carrier image
/// provides each of them (in [`CARRIER_COMMAND_DIRS`]) so the kubelet can start carrier
/// whatever the Pod's `command` says. Must match `CARRIER_NAMES` in images/build.sh.
pub const CARRIER_COMMAND_NAMES: &[&str] = &[
    "carrier",
    "sh",
    "bash",
    "ash",
    "dash",
    "zsh",
    "env",
    "python",
    "python2",
    "python3",
    "python3.8",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "pypy3",
    "node",
    "nodejs",
    "npm",
    "npx",
    "yarn",
    "pnpm",
    "deno",
    "bun",
    "java",
    "ruby",
    "bundle",
    "rails",
    "perl",
    "php",
    "php-fpm",
    "uvicorn",
    "gunicorn",
    "hypercorn",
    "daphne",
    "uwsgi",
    "flask",
    "django-admin",
    "celery",
    "pip",
    "pipenv",
    "poetry",
    "dotnet",
    "nginx",
    "httpd",
    "caddy",
    "go",
    "air",
    "tini",
    "dumb-init",
    "docker-entrypoint.sh",
    "entrypoint.sh",
    "start.sh",
    "run.sh",
];

/// Can the carrier image start a container whose `command` begins with `program`?
pub fn carrier_can_start(program: &str) -> bool {
    match program.rsplit_once('/') {
        Some((dir, name)) => {
            (name == "carrier" && dir == "/usr/local/bin")
                || (CARRIER_COMMAND_DIRS.contains(&dir) && CARRIER_COMMAND_NAMES.contains(&name))
        }
        None => CARRIER_COMMAND_NAMES.contains(&program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert_eq!(
            image_ref("127.0.0.1:5000/", IMAGE_CARRIER, "0.1.0"),
            "127.0.0.1:5000/gefyra-carrier:0.1.0"
        );
        assert_eq!(image_ref("", IMAGE_CARGO, "1"), "gefyra-cargo:1");
    }

    #[test]
    fn client_ips() {
        assert_eq!(client_tunnel_ip(2), Ipv4Addr::new(192, 168, 99, 2));
        assert_eq!(
            original_image_annotation("app"),
            "gefyra.dev/original-image.app"
        );
    }
}
