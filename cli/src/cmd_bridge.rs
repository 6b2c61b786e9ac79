//! `gefyra bridge` / `unbridge`: cluster traffic for a container of running
//! Pods goes to a local dev container.
//!
//! Bridge: for every Pod of the target, one strategic-merge patch writes the
//! original image into the annotation `gefyra.dev/original-image.<container>`
//! and sets the container's image to carrier (atomically: the annotation is
//! there whenever the image is carrier). The bridge is one labelled ConfigMap;
//! stowaway applies it live and pushes the port map to each carrier.
//! Refused before anything changes: a container with an exec probe, one that
//! declares carrier's control port, one whose `command` the carrier image
//! cannot start, a Pod already bridged.
//! Unbridge (also `down`): restores every Pod from its annotation, even when
//! the CLI crashed after patching (the annotation lives on the Pod).

use crate::args::{self, PortPair, Target, WorkloadKind};
use crate::k8s::{self, Cluster};
use crate::ui::{self, Wait};
use crate::{docker, state, Global, Output};
use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use proto::cluster::{BridgePort, BridgeSpec, BridgedPod};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The probe policy (shown by `gefyra bridge --help`).
pub const PROBE_POLICY: &str = "Probes: httpGet and tcpSocket probes keep passing while bridged (carrier \
answers the kubelet's httpGet probes itself and listens on every bridged port). A container with an exec \
probe, or whose `command` starts with a program the carrier image does not provide, is REFUSED before \
anything changes, with the reason: change the probe to httpGet/tcpSocket (or start the container through \
a shell) to bridge it. Carrier is pulled by the kubelet with the container's imagePullPolicy from \
--registry (default: the registry `gefyra up` used).";

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = PROBE_POLICY)]
pub struct BridgeArgs {
    /// The local dev container that receives the traffic (started with `gefyra run`)
    #[arg(short = 'N', long, value_parser = args::container_name)]
    pub name: String,
    /// Namespace of the target workload
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Target Deployment (with --container-name)
    #[arg(long, conflicts_with = "target")]
    pub deployment: Option<String>,
    /// Target StatefulSet (with --container-name)
    #[arg(long, conflicts_with_all = ["target", "deployment"])]
    pub statefulset: Option<String>,
    /// Target Pod (with --container-name)
    #[arg(long, conflicts_with_all = ["target", "deployment", "statefulset"])]
    pub pod: Option<String>,
    /// The container to bridge (needed when the Pod has several)
    #[arg(long, short = 'C')]
    pub container_name: Option<String>,
    /// Target as TYPE/NAME[/CONTAINER], e.g. deployment/oauth2-demo/oauth2-demo-app
    #[arg(long)]
    pub target: Option<Target>,
    /// Port map REMOTE:LOCAL (container port in the cluster : port of the local container); repeatable
    #[arg(
        short = 'p',
        long = "port",
        value_name = "REMOTE:LOCAL",
        required = true
    )]
    pub port: Vec<PortPair>,
    /// Name of the bridge
    #[arg(short = 'I', long = "bridge-name")]
    pub bridge_name: Option<String>,
    /// Registry the cluster pulls carrier from (default: the one `gefyra up` used)
    #[arg(long, value_name = "REGISTRY")]
    pub registry: Option<String>,
    /// Seconds to wait for the bridge to be active
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UnbridgeArgs {
    /// The bridge to remove
    #[arg(short = 'I', long = "bridge-name", required_unless_present = "all")]
    pub bridge_name: Option<String>,
    /// Remove every bridge of this connection (and restore any Pod left patched)
    #[arg(short = 'A', long)]
    pub all: bool,
    /// Seconds to wait for each Pod to run its original image again
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Label selector of the bridge records (ConfigMaps).
pub fn bridge_selector() -> String {
    format!(
        "{}={},{}={}",
        proto::LABEL_APP,
        proto::APP_NAME,
        proto::LABEL_ROLE,
        proto::ROLE_BRIDGE
    )
}

/// Why a container cannot be bridged in place, if it cannot.
pub fn refuse_reason(c: &Container) -> Option<String> {
    let exec = |p: &Option<Probe>| p.as_ref().and_then(|p| p.exec.as_ref()).is_some();
    if exec(&c.liveness_probe) || exec(&c.readiness_probe) || exec(&c.startup_probe) {
        return Some(format!(
            "container {} has an exec probe, which carrier cannot answer; change the probe to httpGet or tcpSocket to bridge it",
            c.name
        ));
    }
    if c.ports
        .as_ref()
        .map(|ps| {
            ps.iter()
                .any(|p| p.container_port == i32::from(proto::CARRIER_CONTROL_PORT))
        })
        .unwrap_or(false)
    {
        return Some(format!(
            "container {} declares port {}, which carrier needs for its control link",
            c.name,
            proto::CARRIER_CONTROL_PORT
        ));
    }
    if let Some(cmd) = c.command.as_ref().and_then(|c| c.first()) {
        if !proto::carrier_can_start(cmd) {
            return Some(format!(
                "container {} starts with `{cmd}`, which the carrier image cannot start (the kubelet keeps the Pod's command); bridge a container whose command is unset or a common interpreter",
                c.name
            ));
        }
    }
    None
}

/// Container ports with an httpGet probe (carrier answers kube-probe itself).
pub fn http_probe_ports(c: &Container) -> Vec<u16> {
    let mut out = BTreeSet::new();
    for p in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
    {
        if let Some(h) = &p.http_get {
            let port = match &h.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => c.ports.as_ref().and_then(|ps| {
                    ps.iter()
                        .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                        .and_then(|cp| u16::try_from(cp.container_port).ok())
                }),
            };
            if let Some(p) = port {
                out.insert(p);
            }
        }
    }
    out.into_iter().collect()
}

/// The first free route ports (one per port) given those in use.
pub fn allocate_route_ports(used: &BTreeSet<u16>, n: usize) -> Result<Vec<u16>> {
    let mut out = Vec::with_capacity(n);
    let mut p = proto::ROUTE_PORT_BASE;
    while out.len() < n {
        if !used.contains(&p) {
            out.push(p);
        }
        p = p
            .checked_add(1)
            .ok_or_else(|| anyhow!("no free route port left: remove unused bridges"))?;
    }
    Ok(out)
}

/// Bridges recorded in the cluster: their spec and the resourceVersion of their ConfigMap.
async fn recorded_bridges(cms: &Api<ConfigMap>) -> Result<Vec<(BridgeSpec, Option<u64>)>> {
    Ok(cms
        .list(&ListParams::default().labels(&bridge_selector()))
        .await?
        .items
        .into_iter()
        .filter_map(|cm| {
            let rv = cm.resource_version().and_then(|v| v.parse().ok());
            cm.data
                .as_ref()
                .and_then(|d| d.get(proto::cluster::DATA_KEY))
                .and_then(|s| serde_json::from_str::<BridgeSpec>(s).ok())
                .map(|spec| (spec, rv))
        })
        .collect())
}

/// The bridges recorded before ours (a lower resourceVersion: etcd's revision at
/// creation) that hold one of our route ports. The later of two clashing bridges
/// always sees the earlier one when it lists after its own create, so it is the
/// one that gives way.
pub fn route_port_clashes(
    ours: &BridgeSpec,
    our_rv: Option<u64>,
    others: &[(BridgeSpec, Option<u64>)],
) -> Vec<String> {
    let mine: BTreeSet<u16> = ours.ports.iter().map(|p| p.route_port).collect();
    others
        .iter()
        .filter(|(b, rv)| {
            b.name != ours.name
                && b.ports.iter().any(|p| mine.contains(&p.route_port))
                // An unknown order: give way (a retry costs a second, a clash a bridge).
                && match (rv, our_rv) {
                    (Some(theirs), Some(ours)) => *theirs < ours,
                    _ => true,
                }
        })
        .map(|(b, _)| b.name.clone())
        .collect()
}

/// Records `spec` as a labelled ConfigMap with the first free route ports. Two
/// `bridge` commands at the same instant may pick the same ports: after the
/// create, the later one sees the clash, deletes its record and picks again.
pub async fn record_bridge(cms: &Api<ConfigMap>, spec: &mut BridgeSpec, conn: &str) -> Result<()> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        pick_route_ports(cms, spec).await?;
        if create_unless_clashing(cms, spec, conn).await? {
            return Ok(());
        }
    }
    bail!(
        "could not reserve route ports after {ATTEMPTS} attempts (other bridges were created at the same time); run the command again"
    )
}

/// Sets `spec`'s route ports to the first ones no recorded bridge uses.
pub async fn pick_route_ports(cms: &Api<ConfigMap>, spec: &mut BridgeSpec) -> Result<()> {
    let used: BTreeSet<u16> = recorded_bridges(cms)
        .await?
        .iter()
        .flat_map(|(b, _)| b.ports.iter().map(|p| p.route_port))
        .collect();
    let route_ports = allocate_route_ports(&used, spec.ports.len())?;
    for (p, r) in spec.ports.iter_mut().zip(route_ports) {
        p.route_port = r;
    }
    Ok(())
}

/// Creates the bridge's record; `false` when an earlier bridge took one of its
/// route ports meanwhile (the record is removed again: pick and retry).
pub async fn create_unless_clashing(
    cms: &Api<ConfigMap>,
    spec: &BridgeSpec,
    conn: &str,
) -> Result<bool> {
    let mut labels = crate::manifests::labels(proto::ROLE_BRIDGE);
    labels.insert(proto::LABEL_CONNECTION.to_string(), conn.to_string());
    labels.insert(proto::LABEL_BRIDGE.to_string(), spec.name.clone());
    let name = proto::cluster::bridge_configmap_name(&spec.name);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(
            [(
                proto::cluster::DATA_KEY.to_string(),
                serde_json::to_string(&spec)?,
            )]
            .into(),
        ),
        ..Default::default()
    };
    let created = match cms.create(&PostParams::default(), &cm).await {
        Ok(c) => c,
        Err(e) if k8s::is_conflict(&e) => bail!(
            "a bridge named {} exists: pick another -I or `gefyra unbridge -I {}`",
            spec.name,
            spec.name
        ),
        Err(e) => return Err(anyhow!(e)).context("cannot record the bridge (ConfigMap)"),
    };
    let our_rv = created.resource_version().and_then(|v| v.parse().ok());
    let clashes = route_port_clashes(spec, our_rv, &recorded_bridges(cms).await?);
    if clashes.is_empty() {
        return Ok(true);
    }
    ui::info(format!(
        "Route port(s) {} also picked by bridge {} at the same instant; picking again",
        spec.ports
            .iter()
            .map(|p| p.route_port.to_string())
            .collect::<Vec<_>>()
            .join(","),
        clashes.join(",")
    ));
    cms.delete(&name, &Default::default())
        .await
        .context("cannot remove the clashing bridge record")?;
    // Wait until the record is gone, so the next pick does not count our own ports.
    for _ in 0..50 {
        if cms.get_opt(&name).await?.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// The strategic-merge patch that bridges `container` (annotation + label + image at once).
pub fn bridge_patch(
    bridge: &str,
    container: &str,
    original: &str,
    carrier: &str,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "annotations": { proto::original_image_annotation(container): original },
            "labels": { proto::LABEL_BRIDGE: bridge },
        },
        "spec": { "containers": [ { "name": container, "image": carrier } ] }
    })
}

/// The patch that restores `container` and removes the bridge's marks.
pub fn restore_patch(container: &str, original: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "annotations": { proto::original_image_annotation(container): null },
            "labels": { proto::LABEL_BRIDGE: null },
        },
        "spec": { "containers": [ { "name": container, "image": original } ] }
    })
}

async fn target_pods(c: &Cluster, ns: &str, kind: WorkloadKind, name: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let w = args::EnvFrom {
        kind,
        name: name.to_string(),
        container: None,
    };
    if kind == WorkloadKind::Pod {
        let p = pods.get_opt(name).await?.ok_or_else(|| {
            anyhow!("pod {name} not found in namespace {ns}; check -n and the name")
        })?;
        return Ok(vec![p]);
    }
    // reuse the selector logic of --env-from: find one Pod, then all Pods with the same selector
    let (one, _) = k8s::workload_pod(c, ns, &w).await?;
    let first = pods.get(&one).await?;
    let owner = first
        .owner_references()
        .first()
        .map(|o| o.name.clone())
        .unwrap_or_default();
    let list = pods.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.owner_references().first().map(|o| o.name.as_str()) == Some(owner.as_str())
        })
        .collect())
}

pub async fn bridge(g: &Global, a: BridgeArgs) -> Result<i32> {
    let conn = g.connection.as_str();
    let st = state::load(conn)?.ok_or_else(|| {
        anyhow!("connection {conn} is not up: run `gefyra up` first (or pass --connection)")
    })?;
    let (kind, wname, container) = match (&a.target, &a.deployment, &a.statefulset, &a.pod) {
        (Some(t), ..) => (t.0.kind, t.0.name.clone(), t.0.container.clone().or(a.container_name.clone())),
        (None, Some(d), _, _) => (WorkloadKind::Deployment, d.clone(), a.container_name.clone()),
        (None, None, Some(s), _) => (WorkloadKind::StatefulSet, s.clone(), a.container_name.clone()),
        (None, None, None, Some(p)) => (WorkloadKind::Pod, p.clone(), a.container_name.clone()),
        _ => bail!("say what to bridge: --deployment NAME --container-name C, or --target TYPE/NAME/CONTAINER"),
    };
    let bridge_name = a
        .bridge_name
        .clone()
        .unwrap_or_else(|| format!("{}-to-{}", wname, a.name));
    let bridge_name = args::connection_name(&bridge_name.to_lowercase()).map_err(|_| {
        anyhow!(
            "'{bridge_name}' is not a valid bridge name (lowercase letters, digits, '-'); pass -I"
        )
    })?;

    // the local end
    let d = docker::connect().await?;
    let local = d
        .inspect_container(
            &a.name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|_| {
            anyhow!(
                "no local container {}: start it with `gefyra run -N {}`",
                a.name,
                a.name
            )
        })?;
    let local_ip: Ipv4Addr = local
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&st.network).cloned())
        .and_then(|e| e.ip_address)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "container {} is not on gefyra's network {}: start it with `gefyra run`",
                a.name,
                st.network
            )
        })?;
    if local.state.and_then(|s| s.running) != Some(true) {
        bail!(
            "container {} is not running: start it with `gefyra run`",
            a.name
        );
    }

    let carrier_image = match &a.registry {
        Some(r) => proto::image_ref(r, proto::IMAGE_CARRIER, proto::VERSION),
        None if !st.carrier_image.is_empty() => st.carrier_image.clone(),
        None => proto::image_ref(
            proto::DEFAULT_REGISTRY,
            proto::IMAGE_CARRIER,
            proto::VERSION,
        ),
    };
    let cluster = k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await?;
    let pods = target_pods(&cluster, &a.namespace, kind, &wname).await?;
    if pods.is_empty() {
        bail!(
            "{kind}/{wname} has no running Pod in namespace {}",
            a.namespace
        );
    }
    // validate every Pod before changing anything
    let mut bridged: Vec<(String, Ipv4Addr, String)> = Vec::new(); // (pod, ip, original image)
    let mut probe_ports = BTreeSet::new();
    let mut container_name = String::new();
    for p in &pods {
        let spec = p.spec.clone().unwrap_or_default();
        let c = match &container {
            Some(name) => {
                spec.containers
                    .iter()
                    .find(|c| &c.name == name)
                    .ok_or_else(|| {
                        anyhow!(
                    "{kind}/{wname} has no container {name} (it has: {}); fix --container-name",
                    spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                )
                    })?
            }
            None if spec.containers.len() == 1 => &spec.containers[0],
            None => bail!(
                "{kind}/{wname} has several containers ({}): pass --container-name",
                spec.containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        container_name = c.name.clone();
        if let Some(why) = refuse_reason(c) {
            bail!("cannot bridge {kind}/{wname}: {why}");
        }
        if p.annotations()
            .contains_key(&proto::original_image_annotation(&c.name))
            || p.labels().contains_key(proto::LABEL_BRIDGE)
        {
            bail!(
                "pod {} is already bridged (bridge {}); unbridge it first: gefyra unbridge -I {}",
                p.name_any(),
                p.labels()
                    .get(proto::LABEL_BRIDGE)
                    .cloned()
                    .unwrap_or_default(),
                p.labels()
                    .get(proto::LABEL_BRIDGE)
                    .cloned()
                    .unwrap_or_default()
            );
        }
        for pp in &a.port {
            let declared = c
                .ports
                .as_ref()
                .map(|ps| {
                    ps.iter()
                        .any(|cp| cp.container_port == i32::from(pp.remote))
                })
                .unwrap_or(true);
            if !declared {
                ui::warn(format!(
                    "container {} does not declare port {}; bridging it anyway",
                    c.name, pp.remote
                ));
            }
        }
        probe_ports.extend(http_probe_ports(c));
        let ip: Ipv4Addr = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("pod {} has no IP yet; retry in a moment", p.name_any()))?;
        let image = c
            .image
            .clone()
            .ok_or_else(|| anyhow!("container {} has no image", c.name))?;
        bridged.push((p.name_any(), ip, image));
    }

    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &st.namespace);
    let mut spec = BridgeSpec {
        name: bridge_name.clone(),
        connection: conn.to_string(),
        namespace: a.namespace.clone(),
        container: container_name.clone(),
        pods: bridged
            .iter()
            .map(|(n, ip, _)| BridgedPod {
                name: n.clone(),
                ip: *ip,
            })
            .collect(),
        ports: a
            .port
            .iter()
            .map(|p| BridgePort {
                remote: p.remote,
                local: p.local,
                route_port: 0,
            })
            .collect(),
        local_ip,
        http_probe_ports: probe_ports.into_iter().collect(),
    };
    record_bridge(&cms, &mut spec, conn).await?;

    let r = async {
        let pods_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &a.namespace);
        for (pod, _, original) in &bridged {
            ui::info(format!("Creating bridge for Pod {pod}"));
            let patch = bridge_patch(&bridge_name, &container_name, original, &carrier_image);
            pods_api
                .patch(pod, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .with_context(|| format!("cannot patch pod {pod}"))?;
        }
        let names: Vec<String> = bridged.iter().map(|(n, _, _)| n.clone()).collect();
        let pull = PullCheck {
            pods: &pods_api,
            names: &names,
            container: &container_name,
            image: &carrier_image,
        };
        wait_active(
            &cluster,
            &st.namespace,
            &bridge_name,
            bridged.len(),
            Duration::from_secs(a.timeout),
            Some(pull),
        )
        .await
    }
    .await;
    if let Err(e) = r {
        ui::warn("bridging failed; restoring the Pods");
        let _ = remove_bridge(
            &cluster,
            &st.namespace,
            &spec,
            Duration::from_secs(a.timeout),
        )
        .await;
        return Err(e);
    }
    match g.output {
        Output::Json => println!("{}", serde_json::to_string(&spec)?),
        Output::Text => println!(
            "Bridge {bridge_name} established: {}/{} port(s) {} -> {} ({})",
            kind,
            wname,
            a.port
                .iter()
                .map(|p| format!("{}:{}", p.remote, p.local))
                .collect::<Vec<_>>()
                .join(","),
            a.name,
            local_ip
        ),
    }
    Ok(0)
}

/// Waits until stowaway reports every carrier configured and the routes open.
/// The bridged Pods, checked while waiting: a carrier image the kubelet cannot pull fails the
/// bridge at once (waiting will not fix it) instead of at the timeout.
pub struct PullCheck<'a> {
    pub pods: &'a Api<Pod>,
    pub names: &'a [String],
    pub container: &'a str,
    pub image: &'a str,
}

impl PullCheck<'_> {
    async fn check(&self) -> Result<()> {
        for n in self.names {
            let Some(p) = self.pods.get_opt(n).await? else {
                continue;
            };
            let waiting = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.name == self.container)
                .and_then(|c| c.state)
                .and_then(|s| s.waiting);
            if let Some(w) = waiting {
                let reason = w.reason.unwrap_or_default();
                if matches!(
                    reason.as_str(),
                    "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
                ) {
                    bail!(
                        "the cluster cannot pull {} for Pod {n} ({reason}: {}); push the carrier image to a registry the cluster reaches (images/push.sh REGISTRY) and pass --registry",
                        self.image,
                        k8s::one_line(&w.message.unwrap_or_default())
                    );
                }
            }
        }
        Ok(())
    }
}

async fn wait_active(
    c: &Cluster,
    ns: &str,
    name: &str,
    pods: usize,
    timeout: Duration,
    pull: Option<PullCheck<'_>>,
) -> Result<()> {
    let pull = &pull;
    ui::info("Waiting for the bridge(s) to become active");
    ui::wait_for(
        &format!("bridge {name} to become active"),
        timeout,
        Duration::from_secs(1),
        || async move {
            if let Some(p) = pull {
                p.check().await?;
            }
            let Some(pod) = k8s::stowaway_pod(c, ns).await? else {
                return Ok(Wait::NotYet("stowaway not ready".into()));
            };
            let st = match k8s::stowaway_status(c, ns, &pod.name).await {
                Ok(s) => s,
                Err(e) => return Ok(Wait::NotYet(e.to_string())),
            };
            let Some(b) = st.bridges.iter().find(|b| b.name == name) else {
                return Ok(Wait::NotYet(
                    "stowaway has not picked the bridge up yet".into(),
                ));
            };
            let configured = b.carriers.iter().filter(|c| c.configured).count();
            if b.routes_open && configured >= pods && b.peer_connected {
                return Ok(Wait::Done(()));
            }
            let errors: Vec<String> = b.carriers.iter().filter_map(|c| c.error.clone()).collect();
            Ok(Wait::NotYet(format!(
                "{configured}/{pods} carriers configured, routes {}, tunnel to the local container {}{}",
                if b.routes_open { "open" } else { "not open" },
                if b.peer_connected {
                    "up"
                } else {
                    "down (is `gefyra up` done and the cargo container running?)"
                },
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(", {}", errors.join("; "))
                }
            )))
        },
    )
    .await
}

/// Restores one Pod's container from its annotation and waits until it runs the original again.
async fn restore_pod(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    timeout: Duration,
) -> Result<bool> {
    let Some(p) = pods.get_opt(pod).await? else {
        return Ok(false);
    };
    let Some(original) = p
        .annotations()
        .get(&proto::original_image_annotation(container))
        .cloned()
    else {
        return Ok(false);
    };
    // The kubelet's status can lag behind the container that really runs: right after a bridge it
    // may still report the original image although carrier already runs. Count restarts: the
    // original runs again once the container restarted after this patch (or, when the kubelet never
    // acted on the carrier image, it keeps running the original with no restart at all).
    let restarts_before = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .map(|c| c.restart_count)
        .unwrap_or(0);
    pods.patch(
        pod,
        &PatchParams::default(),
        &Patch::Strategic(&restore_patch(container, &original)),
    )
    .await
    .with_context(|| format!("cannot restore pod {pod}"))?;
    let patched_at = std::time::Instant::now();
    let pods = pods.clone();
    ui::wait_for(
        &format!("pod {pod} to run {original} again"),
        timeout,
        Duration::from_secs(1),
        || {
            let pods = pods.clone();
            let original = original.clone();
            async move {
                let Some(p) = pods.get_opt(pod).await? else {
                    return Ok(Wait::Done(()));
                };
                let cs = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.name == container);
                Ok(match cs {
                    Some(c)
                        if image_matches(&c.image, &original)
                            && c.state.as_ref().and_then(|s| s.running.as_ref()).is_some()
                            && (c.restart_count > restarts_before
                                || patched_at.elapsed() > Duration::from_secs(15)) =>
                    {
                        Wait::Done(())
                    }
                    Some(c) if image_matches(&c.image, &original) => {
                        Wait::NotYet("waiting for the container to restart".into())
                    }
                    Some(c) => Wait::NotYet(format!("container runs {}", c.image)),
                    None => Wait::NotYet("no status".into()),
                })
            }
        },
    )
    .await?;
    Ok(true)
}

/// The kubelet reports `docker.io/library/x:1` for `x:1`, etc.
fn image_matches(reported: &str, wanted: &str) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches("docker.io/")
            .trim_start_matches("library/")
            .to_string()
    };
    norm(reported) == norm(wanted) || reported.ends_with(wanted)
}

async fn remove_bridge(c: &Cluster, ns: &str, spec: &BridgeSpec, timeout: Duration) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), &spec.namespace);
    for p in &spec.pods {
        restore_pod(&pods, &p.name, &spec.container, timeout).await?;
    }
    k8s::delete_configmap(c, ns, &proto::cluster::bridge_configmap_name(&spec.name)).await?;
    Ok(())
}

/// Removes bridges (`only`: one by name; else all of `connection`, or every bridge when
/// `connection` is None) and restores any Pod still carrying a bridge label whose
/// bridge no longer exists (a CLI that crashed half-way). Returns the names removed.
pub async fn unbridge_all(
    c: &Cluster,
    ns: &str,
    connection: Option<&str>,
    only: Option<&str>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
    let mut removed = Vec::new();
    let mut known = BTreeSet::new();
    for cm in cms
        .list(&ListParams::default().labels(&bridge_selector()))
        .await?
        .items
    {
        let Some(spec) = cm
            .data
            .as_ref()
            .and_then(|d| d.get(proto::cluster::DATA_KEY))
            .and_then(|s| serde_json::from_str::<BridgeSpec>(s).ok())
        else {
            continue;
        };
        known.insert(spec.name.clone());
        let wanted = match (only, connection) {
            (Some(n), _) => spec.name == n,
            (None, Some(conn)) => spec.connection == conn,
            (None, None) => true,
        };
        if wanted {
            ui::info(format!("Removing bridge {}", spec.name));
            remove_bridge(c, ns, &spec, timeout).await?;
            known.remove(&spec.name);
            removed.push(spec.name);
        }
    }
    if only.is_none() {
        // Pods patched by a CLI that never recorded (or already lost) their bridge
        let all: Api<Pod> = Api::all(c.client.clone());
        for p in all
            .list(&ListParams::default().labels(proto::LABEL_BRIDGE))
            .await?
            .items
        {
            let b = p
                .labels()
                .get(proto::LABEL_BRIDGE)
                .cloned()
                .unwrap_or_default();
            if known.contains(&b) {
                continue;
            }
            let pns = p.namespace().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(c.client.clone(), &pns);
            let containers: Vec<String> = p
                .annotations()
                .keys()
                .filter_map(|k| k.strip_prefix(proto::ANNOTATION_ORIGINAL_IMAGE_PREFIX))
                .map(str::to_string)
                .collect();
            for ct in containers {
                ui::info(format!("Restoring pod {pns}/{} (bridge {b})", p.name_any()));
                restore_pod(&pods, &p.name_any(), &ct, timeout).await?;
            }
            if !removed.contains(&b) {
                removed.push(b);
            }
        }
    }
    Ok(removed)
}

pub async fn unbridge(g: &Global, a: UnbridgeArgs) -> Result<i32> {
    let conn = g.connection.as_str();
    let ns = state::load(conn)?
        .map(|s| s.namespace)
        .unwrap_or_else(|| proto::DEFAULT_NAMESPACE.to_string());
    let cluster = k8s::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await?;
    let timeout = Duration::from_secs(a.timeout);
    let removed = if a.all {
        unbridge_all(&cluster, &ns, Some(conn), None, timeout).await?
    } else {
        let name = a.bridge_name.clone().unwrap_or_default();
        let r = unbridge_all(&cluster, &ns, None, Some(&name), timeout).await?;
        if r.is_empty() {
            bail!("no bridge named {name}: `gefyra list` shows the bridges");
        }
        r
    };
    match g.output {
        Output::Json => println!("{}", serde_json::json!({ "removed": removed })),
        Output::Text => {
            if removed.is_empty() {
                println!("No bridges to remove");
            }
            for r in &removed {
                println!("Removed bridge {r}");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, HTTPGetAction};

    fn container() -> Container {
        Container {
            name: "app".into(),
            image: Some("app:1".into()),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8155,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(refuse_reason(&container()), None);
        let mut c = container();
        c.readiness_probe = Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        });
        assert!(refuse_reason(&c).unwrap().contains("exec probe"));
        let mut c = container();
        c.ports.as_mut().unwrap()[0].container_port = i32::from(proto::CARRIER_CONTROL_PORT);
        assert!(refuse_reason(&c).unwrap().contains("control link"));
        let mut c = container();
        c.command = Some(vec!["/app/server".into()]);
        assert!(refuse_reason(&c).unwrap().contains("cannot start"));
        c.command = Some(vec!["python".into(), "-m".into(), "x".into()]);
        assert_eq!(refuse_reason(&c), None);
        c.command = Some(vec!["/usr/local/bin/uvicorn".into()]);
        assert_eq!(refuse_reason(&c), None);
    }

    #[test]
    fn probe_ports_and_route_ports() {
        let mut c = container();
        c.liveness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(http_probe_ports(&c), vec![8155]);
        let used: BTreeSet<u16> = [10000, 10002].into();
        assert_eq!(allocate_route_ports(&used, 2).unwrap(), vec![10001, 10003]);
    }

    fn spec(name: &str, route_ports: &[u16]) -> BridgeSpec {
        BridgeSpec {
            name: name.into(),
            connection: "default".into(),
            namespace: "ns".into(),
            container: "app".into(),
            pods: vec![],
            ports: route_ports
                .iter()
                .map(|r| BridgePort {
                    remote: 80,
                    local: 80,
                    route_port: *r,
                })
                .collect(),
            local_ip: Ipv4Addr::new(172, 30, 0, 2),
            http_probe_ports: vec![],
        }
    }

    #[test]
    fn the_later_of_two_clashing_bridges_gives_way() {
        let a = spec("a", &[10000]);
        let b = spec("b", &[10000, 10001]);
        let c = spec("c", &[10002]);
        let all = vec![
            (a.clone(), Some(5)),
            (b.clone(), Some(6)),
            (c.clone(), Some(7)),
        ];
        // b was created after a and shares 10000: b gives way, a keeps its port.
        assert_eq!(route_port_clashes(&b, Some(6), &all), vec!["a".to_string()]);
        assert!(route_port_clashes(&a, Some(5), &all).is_empty());
        // no shared port, no clash, whatever the order
        assert!(route_port_clashes(&c, Some(7), &all).is_empty());
        // an unknown order gives way
        assert_eq!(route_port_clashes(&a, None, &all), vec!["b".to_string()]);
    }

    #[test]
    fn patches() {
        let p = bridge_patch("b", "app", "app:1", "reg/gefyra-carrier:0.1.0");
        assert_eq!(
            p["metadata"]["annotations"]["gefyra.dev/original-image.app"],
            "app:1"
        );
        assert_eq!(p["metadata"]["labels"][proto::LABEL_BRIDGE], "b");
        assert_eq!(
            p["spec"]["containers"][0]["image"],
            "reg/gefyra-carrier:0.1.0"
        );
        let r = restore_patch("app", "app:1");
        assert!(r["metadata"]["annotations"]["gefyra.dev/original-image.app"].is_null());
        assert_eq!(r["spec"]["containers"][0]["image"], "app:1");
        assert!(image_matches(
            "docker.io/library/busybox:1.36",
            "busybox:1.36"
        ));
    }
}
