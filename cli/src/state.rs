//! Local state of a connection: its private key and what `up` created, under
//! the user's config directory (`$GEFYRA_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/gefyra`, else `~/.config/gefyra`), one directory per
//! connection, files mode 0600. The private key never leaves this machine.

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use proto::keys::Key;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What `up` set up for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    pub connection: String,
    /// Namespace of the cluster side.
    pub namespace: String,
    pub tunnel_ip: Ipv4Addr,
    pub configmap: String,
    pub network: String,
    pub subnet: Ipv4Net,
    pub cargo_ip: Ipv4Addr,
    pub cargo_container: String,
    pub endpoint: String,
    /// The kube context `up` used (informational).
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub registry: String,
    /// The carrier image bridges use.
    #[serde(default)]
    pub carrier_image: String,
    #[serde(default)]
    pub cargo_image: String,
    /// Stowaway's public key the cargo config was written with.
    #[serde(default)]
    pub server_public_key: String,
}

pub fn config_root() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("GEFYRA_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        if !d.is_empty() {
            return Ok(PathBuf::from(d).join("gefyra"));
        }
    }
    let home = std::env::var_os("HOME")
        .context("neither GEFYRA_CONFIG_DIR nor HOME is set: set GEFYRA_CONFIG_DIR to a directory for gefyra's state")?;
    Ok(PathBuf::from(home).join(".config").join("gefyra"))
}

pub fn connection_dir(connection: &str) -> Result<PathBuf> {
    Ok(config_root()?.join(connection))
}

fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}: check its permissions", dir.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A fresh x25519 key pair (private, public).
pub fn generate_keypair() -> (Key, Key) {
    let secret = x25519_dalek::StaticSecret::random();
    let public = x25519_dalek::PublicKey::from(&secret);
    (Key(secret.to_bytes()), Key(public.to_bytes()))
}

pub fn public_of(private: &Key) -> Key {
    let secret = x25519_dalek::StaticSecret::from(private.0);
    Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

/// The connection's private key, generated on first use.
pub fn load_or_create_key(connection: &str) -> Result<(Key, bool)> {
    let dir = connection_dir(connection)?;
    let path = dir.join("private.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let k = Key::parse(&s).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid key ({e}): remove it and run `gefyra up` again",
                    path.display()
                )
            })?;
            Ok((k, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ensure_dir(&dir)?;
            let (private, _) = generate_keypair();
            write_private(&path, private.to_base64().as_bytes())?;
            Ok((private, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn load(connection: &str) -> Result<Option<ConnectionState>> {
    let path = connection_dir(connection)?.join("state.json");
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is damaged: run `gefyra down --connection {connection}` to start over",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn save(state: &ConnectionState) -> Result<()> {
    let dir = connection_dir(&state.connection)?;
    ensure_dir(&dir)?;
    write_private(&dir.join("state.json"), &serde_json::to_vec_pretty(state)?)
}

/// Removes the connection's directory (key and state).
pub fn remove(connection: &str) -> Result<()> {
    let dir = connection_dir(connection)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Connections with a state file.
pub fn connections() -> Result<Vec<String>> {
    let root = config_root()?;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        if e.path().join("state.json").exists() {
            if let Some(n) = e.file_name().to_str() {
                out.push(n.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_matches() {
        let (private, public) = generate_keypair();
        assert_eq!(public_of(&private), public);
        assert_ne!(private, public);
    }
}
