//! Forward targets (`HOST:PORT`) and their per-connection resolution.
//!
//! Names are resolved with hickory-resolver (it reads /etc/resolv.conf and
//! /etc/hosts itself; the binaries are static, so getaddrinfo is never used),
//! once per connection: a DNS change is picked up as soon as the record's TTL
//! runs out.

use hickory_resolver::TokioResolver;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::OnceCell;

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("`{0}`: expected HOST:PORT (IPv6 in brackets: [::1]:8080)")]
    Shape(String),
    #[error("`{0}`: the port must be a number 1-65535")]
    Port(String),
}

/// Splits `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`.
fn split_host_port(s: &str) -> Result<(&str, u16), ParseError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| ParseError::Shape(s.to_string()))?;
        (h, p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| ParseError::Shape(s.to_string()))?;
        if h.contains(':') {
            // A bare IPv6 address without brackets is ambiguous.
            return Err(ParseError::Shape(s.to_string()));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(ParseError::Shape(s.to_string()));
    }
    let port: u16 = port.parse().map_err(|_| ParseError::Port(s.to_string()))?;
    if port == 0 {
        return Err(ParseError::Port(s.to_string()));
    }
    Ok((host, port))
}

/// Parses a listen address: an IP literal and a port (0 allowed: any port).
pub fn parse_listen(s: &str) -> Result<SocketAddr, ParseError> {
    s.parse::<SocketAddr>()
        .map_err(|_| ParseError::Shape(format!("{s} (listen addresses are IP:PORT)")))
}

impl std::str::FromStr for Target {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (host, port) = split_host_port(s)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Target::Addr(SocketAddr::new(ip, port)));
        }
        let valid = host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid || host.starts_with('-') {
            return Err(ParseError::Shape(s.to_string()));
        }
        Ok(Target::Name {
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no DNS configuration: {0}")]
    Config(String),
    #[error("cannot resolve {host}: {reason}")]
    Lookup { host: String, reason: String },
}

/// A lazily built resolver shared by every connection (built on the first
/// name, so a forwarder with IP targets needs no /etc/resolv.conf).
#[derive(Default)]
pub struct Resolver {
    inner: OnceCell<Result<TokioResolver, String>>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The addresses to try for `target`, in order.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
        let (host, port) = match target {
            Target::Addr(a) => return Ok(vec![*a]),
            Target::Name { host, port } => (host, *port),
        };
        let resolver = self
            .inner
            .get_or_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| e.to_string())
            })
            .await
            .as_ref()
            .map_err(|e| ResolveError::Config(e.clone()))?;
        // A trailing dot makes the name absolute (no search domains).
        let lookup = resolver
            .lookup_ip(host.as_str())
            .await
            .map_err(|e| ResolveError::Lookup {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(ResolveError::Lookup {
                host: host.clone(),
                reason: "no addresses".into(),
            });
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            "127.0.0.1:80".parse::<Target>(),
            Ok(Target::Addr("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:443".parse::<Target>(),
            Ok(Target::Addr("[::1]:443".parse().unwrap()))
        );
        assert_eq!(
            "db.svc.cluster.local:5432".parse::<Target>(),
            Ok(Target::Name {
                host: "db.svc.cluster.local".into(),
                port: 5432
            })
        );
        assert!("::1:80".parse::<Target>().is_err());
        assert!("host".parse::<Target>().is_err());
        assert!("host:0".parse::<Target>().is_err());
        assert!("host:99999".parse::<Target>().is_err());
        assert!("a b:1".parse::<Target>().is_err());
        assert!(parse_listen("0.0.0.0:8080").is_ok());
        assert!(parse_listen("[::]:8080").is_ok());
        assert!(parse_listen("localhost:8080").is_err());
    }

    #[tokio::test]
    async fn literal_needs_no_dns() {
        let r = Resolver::new();
        let t: Target = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            r.resolve(&t).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
    }
}
