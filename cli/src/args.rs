//! Parsers for the values users type: `-p`, `-v`, `--env-from`, `--port`,
//! `--target`, `--host`, `-e`. Each error says what was expected.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// `-p/--expose [IP:]HOST:CONTAINER[/tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

fn port(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what} '{s}' is not a port number (1-65535)")),
    }
}

impl FromStr for PortMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp], e.g. 8080:8155";
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Protocol::Tcp),
            Some((spec, "udp")) => (spec, Protocol::Udp),
            Some((_, other)) => {
                return Err(format!("unknown protocol '{other}' in '{s}': {usage}"))
            }
            None => (s, Protocol::Tcp),
        };
        let (rest, container) = spec
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}': {usage}"))?;
        let container_port =
            port(container, "container port").map_err(|e| format!("{e}; {usage}"))?;
        let (host_ip, host) = match rest.rsplit_once(':') {
            Some((ip, host)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("'{ip}' is not an IP address; {usage}"))?;
                (Some(ip), host)
            }
            None => (None, rest),
        };
        let host_port = port(host, "host port").map_err(|e| format!("{e}; {usage}"))?;
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }
}

/// `--env-from TYPE/NAME[/CONTAINER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFrom {
    pub kind: WorkloadKind,
    pub name: String,
    pub container: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    Pod,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::Pod => "pod",
        })
    }
}

impl FromStr for WorkloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "deployment" | "deploy" | "deployments" => Ok(WorkloadKind::Deployment),
            "statefulset" | "sts" | "statefulsets" => Ok(WorkloadKind::StatefulSet),
            "pod" | "po" | "pods" => Ok(WorkloadKind::Pod),
            other => Err(format!(
                "unknown workload type '{other}': use deployment, statefulset or pod"
            )),
        }
    }
}

fn k8s_name(s: &str, what: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid {what} name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// Parses `TYPE/NAME[/CONTAINER]` (shared by `--env-from` and `--target`).
fn workload_ref(s: &str, flag: &str) -> Result<EnvFrom, String> {
    let usage = format!("{flag} expects TYPE/NAME[/CONTAINER], e.g. deployment/oauth2-demo/app");
    let parts: Vec<&str> = s.split('/').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("'{s}': {usage}"));
    }
    let kind: WorkloadKind = parts[0].parse().map_err(|e| format!("{e} ({usage})"))?;
    let name = k8s_name(parts[1], "workload").map_err(|e| format!("{e}; {usage}"))?;
    let container = match parts.get(2) {
        Some(c) => Some(k8s_name(c, "container").map_err(|e| format!("{e}; {usage}"))?),
        None => None,
    };
    Ok(EnvFrom {
        kind,
        name,
        container,
    })
}

impl FromStr for EnvFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        workload_ref(s, "--env-from")
    }
}

/// `--target TYPE/NAME[/CONTAINER]` (bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(pub EnvFrom);

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        workload_ref(s, "--target").map(Target)
    }
}

/// `-v SRC:DST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage =
            "expected SOURCE:TARGET[:ro|rw] with an absolute TARGET, e.g. /home/me/app:/app";
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, mode] => return Err(format!("unknown volume mode '{mode}' in '{s}': {usage}")),
            _ => return Err(format!("'{s}': {usage}")),
        };
        if source.is_empty() || !target.starts_with('/') {
            return Err(format!("'{s}': {usage}"));
        }
        Ok(Volume {
            source: source.to_string(),
            target: target.to_string(),
            read_only,
        })
    }
}

impl Volume {
    /// The Docker bind string; a relative host path is made absolute.
    pub fn bind(&self) -> Result<String, String> {
        let src = std::path::Path::new(&self.source);
        let abs = if src.is_absolute() {
            src.to_path_buf()
        } else if self.source.starts_with('.') || self.source.contains('/') {
            std::env::current_dir()
                .map_err(|e| format!("cannot read the current directory: {e}"))?
                .join(src)
        } else {
            // a named Docker volume
            src.to_path_buf()
        };
        let mode = if self.read_only { ":ro" } else { "" };
        Ok(format!("{}:{}{}", abs.display(), self.target, mode))
    }
}

/// `--port REMOTE:LOCAL` (bridge) or `--port N` for `up` (the NodePort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    pub remote: u16,
    pub local: u16,
}

impl FromStr for PortPair {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected REMOTE_PORT:LOCAL_PORT, e.g. 8155:8155";
        match s.split_once(':') {
            Some((r, l)) => Ok(PortPair {
                remote: port(r, "remote port").map_err(|e| format!("{e}; {usage}"))?,
                local: port(l, "local port").map_err(|e| format!("{e}; {usage}"))?,
            }),
            None => {
                let p = port(s, "port").map_err(|e| format!("{e}; {usage}"))?;
                Ok(PortPair {
                    remote: p,
                    local: p,
                })
            }
        }
    }
}

/// `up --port N`: a NodePort (30000-32767 by default on Kubernetes).
pub fn node_port(s: &str) -> Result<u16, String> {
    let p = port(s, "--port")?;
    if (30000..=32767).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "--port {p} is outside the NodePort range 30000-32767; pick a port in it"
        ))
    }
}

/// `--host HOST[:PORT]`: the endpoint cargo dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected HOST[:PORT], e.g. 192.168.1.10:31820";
        if s.is_empty() {
            return Err(usage.to_string());
        }
        if let Some(rest) = s.strip_prefix('[') {
            // [v6]:port
            let (h, p) = rest
                .split_once(']')
                .ok_or_else(|| format!("'{s}': {usage}"))?;
            let port = match p.strip_prefix(':') {
                Some(p) => Some(port(p, "port").map_err(|e| format!("{e}; {usage}"))?),
                None if p.is_empty() => None,
                None => return Err(format!("'{s}': {usage}")),
            };
            return Ok(HostPort {
                host: h.to_string(),
                port,
            });
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                if h.is_empty() {
                    return Err(format!("'{s}': {usage}"));
                }
                Ok(HostPort {
                    host: h.to_string(),
                    port: Some(port(p, "port").map_err(|e| format!("{e}; {usage}"))?),
                })
            }
            Some(_) => Ok(HostPort {
                host: s.to_string(),
                port: None,
            }),
            None => Ok(HostPort {
                host: s.to_string(),
                port: None,
            }),
        }
    }
}

impl HostPort {
    pub fn endpoint(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

/// `-e KEY=VALUE` (a bare `KEY` takes the value from the caller's environment, as `docker run -e`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: Option<String>,
}

impl FromStr for EnvVar {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (s, None),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("'{s}': expected KEY=VALUE"));
        }
        Ok(EnvVar {
            key: key.to_string(),
            value,
        })
    }
}

/// Splits `-c "CMD"` like a shell would (quotes respected).
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    match shlex::split(s) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err("-c is empty: give the command to run".to_string()),
        None => Err(format!(
            "-c '{s}' has unbalanced quotes: quote the command as one shell word"
        )),
    }
}

/// A Docker container or Kubernetes object name given by the user.
pub fn container_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid container name (letters, digits, '_', '.', '-')"
        ))
    }
}

/// A connection name: used in Docker names, labels and a directory name.
pub fn connection_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid connection name (lowercase letters, digits and '-', at most 40)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings() {
        let p: PortMapping = "8080:8155".parse().unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 8155,
                protocol: Protocol::Tcp
            }
        );
        let p: PortMapping = "127.0.0.1:5678:5678/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        let p: PortMapping = "[::1]:80:8080".parse().unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        for bad in ["8080", "a:1", "1:0", "70000:1", "x.y:1:2", "1:2/sctp", ""] {
            let e = bad.parse::<PortMapping>().unwrap_err();
            assert!(e.contains("expected") || e.contains("port"), "{bad}: {e}");
        }
    }

    #[test]
    fn env_from() {
        let e: EnvFrom = "deployment/oauth2-demo".parse().unwrap();
        assert_eq!(e.kind, WorkloadKind::Deployment);
        assert_eq!(e.name, "oauth2-demo");
        assert_eq!(e.container, None);
        let e: EnvFrom = "pod/p-1/app".parse().unwrap();
        assert_eq!(e.kind, WorkloadKind::Pod);
        assert_eq!(e.container.as_deref(), Some("app"));
        let e: EnvFrom = "sts/db".parse().unwrap();
        assert_eq!(e.kind, WorkloadKind::StatefulSet);
        for bad in [
            "deployment",
            "job/x",
            "deployment/X",
            "deployment/a/b/c",
            "/x",
            "pod/",
        ] {
            let e = bad.parse::<EnvFrom>().unwrap_err();
            assert!(e.contains("--env-from"), "{bad}: {e}");
        }
    }

    #[test]
    fn targets() {
        let t: Target = "deployment/oauth2-demo/oauth2-demo-app".parse().unwrap();
        assert_eq!(t.0.container.as_deref(), Some("oauth2-demo-app"));
        assert!("cronjob/x"
            .parse::<Target>()
            .unwrap_err()
            .contains("--target"));
    }

    #[test]
    fn volumes() {
        let v: Volume = "/home/u/app:/app".parse().unwrap();
        assert_eq!(v.bind().unwrap(), "/home/u/app:/app");
        let v: Volume = "/a:/b:ro".parse().unwrap();
        assert!(v.read_only);
        assert_eq!(v.bind().unwrap(), "/a:/b:ro");
        let v: Volume = "./src:/app".parse().unwrap();
        assert!(v.bind().unwrap().starts_with('/'));
        let v: Volume = "myvol:/data".parse().unwrap();
        assert_eq!(v.bind().unwrap(), "myvol:/data");
        for bad in ["/a", "/a:b", "/a:/b:xx", ":/b", "/a:/b:ro:x"] {
            assert!(bad.parse::<Volume>().is_err(), "{bad}");
        }
    }

    #[test]
    fn port_pairs_and_node_ports() {
        assert_eq!(
            "8155:8156".parse::<PortPair>().unwrap(),
            PortPair {
                remote: 8155,
                local: 8156
            }
        );
        assert_eq!("80".parse::<PortPair>().unwrap().local, 80);
        assert!("a:1".parse::<PortPair>().is_err());
        assert_eq!(node_port("31820").unwrap(), 31820);
        assert!(node_port("8080").unwrap_err().contains("30000-32767"));
        assert!(node_port("x").is_err());
    }

    #[test]
    fn hosts() {
        let h: HostPort = "10.0.0.1:31000".parse().unwrap();
        assert_eq!(h.endpoint(1), "10.0.0.1:31000");
        let h: HostPort = "node.example".parse().unwrap();
        assert_eq!(h.endpoint(31820), "node.example:31820");
        let h: HostPort = "[fd00::1]:5".parse().unwrap();
        assert_eq!(h.endpoint(1), "[fd00::1]:5");
        let h: HostPort = "fd00::1".parse().unwrap();
        assert_eq!(h.endpoint(7), "[fd00::1]:7");
        assert!("h:x".parse::<HostPort>().is_err());
        assert!(":1".parse::<HostPort>().is_err());
    }

    #[test]
    fn env_and_commands() {
        let e: EnvVar = "A=b=c".parse().unwrap();
        assert_eq!((e.key.as_str(), e.value.as_deref()), ("A", Some("b=c")));
        assert_eq!("A".parse::<EnvVar>().unwrap().value, None);
        assert!("=x".parse::<EnvVar>().is_err());
        assert_eq!(
            split_command("bash -c 'python -m uvicorn main:app --port 8155'").unwrap(),
            vec!["bash", "-c", "python -m uvicorn main:app --port 8155"]
        );
        assert!(split_command("bash -c 'x").is_err());
        assert!(container_name("myfastapi-demo").is_ok());
        assert!(container_name("-x").is_err());
        assert!(connection_name("second").is_ok());
        assert!(connection_name("Second").is_err());
    }
}
