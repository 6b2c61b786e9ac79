//! Cluster mode (owned by the CLI work): watch the labelled client and bridge
//! ConfigMaps in stowaway's namespace and publish the desired peers and bridges.
//! Placeholder: filled in by the CLI task.

use proto::cluster::BridgeSpec;
use proto::config::PeerConfig;
use tokio::sync::watch;

/// Watches ConfigMaps in `namespace` until the process ends, sending the full
/// desired sets on every change (a restart re-lists: no state is kept).
pub async fn watch(
    client: kube::Client,
    namespace: String,
    peers_tx: watch::Sender<Vec<PeerConfig>>,
    bridges_tx: watch::Sender<Vec<BridgeSpec>>,
) -> anyhow::Result<()> {
    let _ = (client, namespace, peers_tx, bridges_tx);
    std::future::pending::<()>().await;
    Ok(())
}
