//! Everything the CLI asks Kubernetes (kube-rs, typed objects, server-side
//! apply with one field manager).

use crate::manifests::{self, Install, ServiceType};
use crate::ui::{self, Wait};
use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use proto::cluster::ClientSpec;
use proto::keys::Key;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const FIELD_MANAGER: &str = "gefyra";

/// A connected cluster client.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub url: String,
    pub context: Option<String>,
}

/// Connects and checks the API server answers (10 s).
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Cluster> {
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = if let Some(path) = kubeconfig {
        let kc = Kubeconfig::read_from(path).map_err(|e| {
            anyhow!(
                "cannot read kubeconfig {}: {e}; pass a valid --kubeconfig",
                path.display()
            )
        })?;
        Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| anyhow!("kubeconfig {}: {e}; check --context", path.display()))?
    } else if context.is_some() {
        Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| anyhow!("kubeconfig: {e}; check --context or --kubeconfig"))?
    } else {
        Config::infer().await.map_err(|e| {
            anyhow!("no Kubernetes configuration found ({e}); pass --kubeconfig or set KUBECONFIG")
        })?
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| anyhow!("cannot set up a client for {url}: {e}; check the kubeconfig"))?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!(
            "cannot reach the cluster at {url}: {}; check that it runs and --kubeconfig/--context point to it",
            one_line(&e.to_string())
        ),
        Err(_) => bail!(
            "the cluster at {url} did not answer within 10s; check that it runs and --kubeconfig/--context point to it"
        ),
    }
    Ok(Cluster {
        client,
        url,
        context: context.map(str::to_string),
    })
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| {
        format!(
            "cannot apply {} {name}",
            K::kind(&K::DynamicType::default())
        )
    })
}

/// What `install` did: the objects it created (for rollback) and whether it changed anything.
#[derive(Debug, Default)]
pub struct Installed {
    pub created_namespace: bool,
    pub created: Vec<(&'static str, String)>,
    pub upgraded_from: Option<String>,
    pub server_public_key: Option<Key>,
}

impl Installed {
    pub fn changed(&self) -> bool {
        self.created_namespace || !self.created.is_empty() || self.upgraded_from.is_some()
    }
}

async fn ensure<K>(api: &Api<K>, obj: &K, kind: &'static str, out: &mut Installed) -> Result<()>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_none() {
        apply(api, obj).await?;
        out.created.push((kind, name));
    }
    Ok(())
}

/// Installs the cluster side where missing, upgrades the Deployment when its
/// version differs. Records what it created in `out` (also on error).
pub async fn install(c: &Cluster, i: &Install, out: &mut Installed) -> Result<()> {
    let ns = i.namespace.as_str();
    let nss: Api<Namespace> = Api::all(c.client.clone());
    match nss.get_opt(ns).await.with_context(|| {
        format!("cannot read namespace {ns}: check your permissions (`gefyra check`)")
    })? {
        Some(n) if n.metadata.deletion_timestamp.is_some() => bail!(
            "namespace {ns} is being deleted (a previous `gefyra down --all`); wait a moment and run `gefyra up` again"
        ),
        Some(_) => {}
        None => {
            apply(&nss, &manifests::namespace(ns)).await?;
            out.created_namespace = true;
        }
    }
    let client = c.client.clone();
    ensure(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &manifests::service_account(ns),
        "serviceaccount",
        out,
    )
    .await?;
    ensure(
        &Api::<Role>::namespaced(client.clone(), ns),
        &manifests::role(ns),
        "role",
        out,
    )
    .await?;
    ensure(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        &manifests::role_binding(ns),
        "rolebinding",
        out,
    )
    .await?;

    // the server key: generated once, at install
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let public = match secrets.get_opt(proto::STOWAWAY_SECRET).await? {
        Some(s) => secret_public_key(&s)?,
        None => {
            let (private, public) = crate::state::generate_keypair();
            secrets
                .create(
                    &PostParams::default(),
                    &manifests::secret(ns, &private, &public),
                )
                .await
                .context("cannot create the stowaway key Secret")?;
            out.created
                .push(("secret", proto::STOWAWAY_SECRET.to_string()));
            public
        }
    };
    out.server_public_key = Some(public);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let want = manifests::deployment(i);
    match deployments.get_opt(proto::STOWAWAY_NAME).await? {
        None => {
            apply(&deployments, &want).await?;
            out.created
                .push(("deployment", proto::STOWAWAY_NAME.to_string()));
        }
        Some(d) => {
            let have = installed_version(&d);
            let have_image = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone());
            if have.as_deref() != Some(proto::VERSION)
                || have_image.as_deref() != Some(i.stowaway_image.as_str())
            {
                apply(&deployments, &want).await?;
                out.upgraded_from = Some(have.unwrap_or_else(|| "unknown".into()));
            }
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let want = manifests::service(i);
    match services.get_opt(proto::STOWAWAY_SERVICE).await? {
        None => {
            apply(&services, &want).await?;
            out.created
                .push(("service", proto::STOWAWAY_SERVICE.to_string()));
        }
        Some(s) => {
            let spec = s.spec.unwrap_or_default();
            let port = spec
                .ports
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|p| p.node_port);
            if spec.type_.as_deref() != Some(i.service_type.as_k8s())
                || port != Some(i32::from(i.node_port))
            {
                apply(&services, &want).await?;
                if out.upgraded_from.is_none() {
                    out.upgraded_from = Some(proto::VERSION.to_string());
                }
            }
        }
    }
    Ok(())
}

pub fn installed_version(d: &Deployment) -> Option<String> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(proto::ANNOTATION_VERSION))
        .cloned()
}

fn secret_public_key(s: &Secret) -> Result<Key> {
    let data = s.data.as_ref();
    let get = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    if let Some(p) = get(proto::SECRET_PUBLIC_KEY) {
        if let Ok(k) = Key::parse(&p) {
            return Ok(k);
        }
    }
    if let Some(p) = get(proto::SECRET_PRIVATE_KEY) {
        if let Ok(k) = Key::parse(&p) {
            return Ok(crate::state::public_of(&k));
        }
    }
    bail!(
        "the Secret {} holds no valid key; delete it (or run `gefyra down --all`) and run `gefyra up` again",
        proto::STOWAWAY_SECRET
    )
}

/// Reads stowaway's public key from its Secret.
pub async fn server_public_key(c: &Cluster, ns: &str) -> Result<Key> {
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), ns);
    let s = secrets
        .get_opt(proto::STOWAWAY_SECRET)
        .await?
        .ok_or_else(|| anyhow!("gefyra is not installed in namespace {ns}: run `gefyra up`"))?;
    secret_public_key(&s)
}

/// Removes what a failed `install` created.
pub async fn rollback_install(c: &Cluster, ns: &str, done: &Installed) {
    if done.created_namespace {
        let nss: Api<Namespace> = Api::all(c.client.clone());
        if let Err(e) = nss.delete(ns, &DeleteParams::background()).await {
            ui::warn(format!("rollback: cannot delete namespace {ns}: {e}"));
        }
        return;
    }
    let dp = DeleteParams::background();
    for (kind, name) in done.created.iter().rev() {
        let r = match *kind {
            "serviceaccount" => Api::<ServiceAccount>::namespaced(c.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "role" => Api::<Role>::namespaced(c.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "rolebinding" => Api::<RoleBinding>::namespaced(c.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "secret" => Api::<Secret>::namespaced(c.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "deployment" => Api::<Deployment>::namespaced(c.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "service" => Api::<Service>::namespaced(c.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
        if let Err(e) = r {
            if !is_not_found(&e) {
                ui::warn(format!("rollback: cannot delete {kind} {name}: {e}"));
            }
        }
    }
}

/// The stowaway Pod once it is ready.
#[derive(Debug, Clone)]
pub struct ReadyPod {
    pub name: String,
    pub host_ip: Option<Ipv4Addr>,
    pub pod_ip: Option<Ipv4Addr>,
}

fn stowaway_selector() -> String {
    format!(
        "{}={},{}={}",
        proto::LABEL_APP,
        proto::APP_NAME,
        proto::LABEL_ROLE,
        proto::ROLE_STOWAWAY
    )
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            .unwrap_or(false)
}

/// A waiting reason that waiting will not fix (image pull, crash loop).
fn pod_problem(p: &Pod) -> Option<String> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    for s in statuses {
        let w = s.state.as_ref()?.waiting.as_ref();
        if let Some(w) = w {
            let reason = w.reason.clone().unwrap_or_default();
            if matches!(
                reason.as_str(),
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
            ) {
                return Some(format!(
                    "the cluster cannot pull {} ({reason}: {}); push the gefyra images to a registry the cluster reaches and pass --registry",
                    s.image,
                    one_line(&w.message.clone().unwrap_or_default())
                ));
            }
            if reason == "CrashLoopBackOff" && s.restart_count >= 3 {
                return Some(format!(
                    "stowaway keeps crashing ({} restarts); read its log: kubectl -n {} logs deploy/{}",
                    s.restart_count,
                    p.namespace().unwrap_or_default(),
                    proto::STOWAWAY_NAME
                ));
            }
        }
    }
    None
}

/// Finds the ready stowaway Pod now, if any.
pub async fn stowaway_pod(c: &Cluster, ns: &str) -> Result<Option<ReadyPod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&stowaway_selector()))
        .await?;
    Ok(list.items.iter().find(|p| pod_ready(p)).map(|p| {
        let st = p.status.clone().unwrap_or_default();
        ReadyPod {
            name: p.name_any(),
            host_ip: st.host_ip.and_then(|s| s.parse().ok()),
            pod_ip: st.pod_ip.and_then(|s| s.parse().ok()),
        }
    }))
}

/// Waits until the stowaway Deployment has a ready Pod of the current version.
pub async fn wait_stowaway_ready(c: &Cluster, ns: &str, timeout: Duration) -> Result<ReadyPod> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    ui::wait_for(
        "stowaway to be ready",
        timeout,
        Duration::from_millis(500),
        || {
            let pods = pods.clone();
            let deployments = deployments.clone();
            async move {
                let d = deployments.get(proto::STOWAWAY_NAME).await?;
                let gen = d.metadata.generation.unwrap_or(0);
                let st = d.status.unwrap_or_default();
                let list = pods
                    .list(&ListParams::default().labels(&stowaway_selector()))
                    .await?;
                for p in &list.items {
                    if let Some(problem) = pod_problem(p) {
                        bail!(problem);
                    }
                }
                let updated = st.observed_generation.unwrap_or(0) >= gen
                    && st.updated_replicas.unwrap_or(0) >= 1
                    && st.replicas.unwrap_or(0) == st.updated_replicas.unwrap_or(0);
                if updated {
                    if let Some(p) = list.items.iter().find(|p| pod_ready(p)) {
                        let s = p.status.clone().unwrap_or_default();
                        return Ok(Wait::Done(ReadyPod {
                            name: p.name_any(),
                            host_ip: s.host_ip.and_then(|s| s.parse().ok()),
                            pod_ip: s.pod_ip.and_then(|s| s.parse().ok()),
                        }));
                    }
                }
                let phases: Vec<String> = list
                    .items
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {}",
                            p.name_any(),
                            p.status
                                .as_ref()
                                .and_then(|s| s.phase.clone())
                                .unwrap_or_else(|| "Pending".into())
                        )
                    })
                    .collect();
                Ok(Wait::NotYet(if phases.is_empty() {
                    "no Pod yet".into()
                } else {
                    phases.join(", ")
                }))
            }
        },
    )
    .await
}

/// The WireGuard endpoint clients dial: `--host`, else the stowaway Pod's node
/// (NodePort) or the load balancer's address. A loopback node address (a local
/// cluster) is replaced by `local_gateway` (the Docker network's gateway: this host).
pub async fn derive_endpoint(
    c: &Cluster,
    ns: &str,
    service_type: ServiceType,
    pod: &ReadyPod,
    local_gateway: Ipv4Addr,
    timeout: Duration,
) -> Result<String> {
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    match service_type {
        ServiceType::NodePort => {
            let svc = services.get(proto::STOWAWAY_SERVICE).await?;
            let port = svc
                .spec
                .and_then(|s| s.ports)
                .and_then(|p| p.first().and_then(|p| p.node_port))
                .ok_or_else(|| {
                    anyhow!("the WireGuard Service has no NodePort; pass --host HOST:PORT")
                })?;
            let ip = match pod.host_ip {
                Some(ip) => ip,
                None => first_node_ip(c).await?,
            };
            let ip = if ip.is_loopback() { local_gateway } else { ip };
            Ok(format!("{ip}:{port}"))
        }
        ServiceType::LoadBalancer => {
            ui::wait_for(
                "the load balancer address",
                timeout,
                Duration::from_secs(1),
                || {
                    let services = services.clone();
                    async move {
                        let svc = services.get(proto::STOWAWAY_SERVICE).await?;
                        let ing = svc
                            .status
                            .and_then(|s| s.load_balancer)
                            .and_then(|l| l.ingress)
                            .and_then(|i| i.into_iter().next());
                        Ok(match ing {
                            Some(i) => match i.ip.or(i.hostname) {
                                Some(h) => Wait::Done(format!("{h}:{}", proto::WIREGUARD_PORT)),
                                None => Wait::NotYet("no address".into()),
                            },
                            None => Wait::NotYet("no ingress yet".into()),
                        })
                    }
                },
            )
            .await
        }
    }
}

async fn first_node_ip(c: &Cluster) -> Result<Ipv4Addr> {
    let nodes: Api<Node> = Api::all(c.client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .context("cannot list nodes to find the endpoint; pass --host HOST[:PORT]")?;
    for n in list.items {
        for a in n.status.and_then(|s| s.addresses).unwrap_or_default() {
            if a.type_ == "InternalIP" {
                if let Ok(ip) = a.address.parse() {
                    return Ok(ip);
                }
            }
        }
    }
    bail!("no node has an InternalIP; pass --host HOST[:PORT]")
}

/// Registers a client: creates its ConfigMap under the name derived from the
/// first free tunnel address (AlreadyExists: try the next), race-free.
pub async fn register_client(
    c: &Cluster,
    ns: &str,
    connection: &str,
    public_key: &Key,
    subnet: ipnet::Ipv4Net,
) -> Result<(Ipv4Addr, String)> {
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
    for n in 2..=254u8 {
        let ip = proto::client_tunnel_ip(n);
        let spec = ClientSpec {
            connection: connection.to_string(),
            public_key: public_key.clone(),
            tunnel_ip: ip,
            subnet,
        };
        let cm = manifests::client_configmap(ns, &spec)?;
        match cms.create(&PostParams::default(), &cm).await {
            Ok(_) => return Ok((ip, cm.name_any())),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => {
                return Err(anyhow!(e)).context("cannot register this client (create ConfigMap)")
            }
        }
    }
    bail!("all 253 tunnel addresses are taken in namespace {ns}: remove stale clients (`gefyra down` on their machines)")
}

/// The client's ConfigMap, if it is still registered with this key.
pub async fn client_registered(c: &Cluster, ns: &str, name: &str, key: &Key) -> Result<bool> {
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
    let Some(cm) = cms.get_opt(name).await? else {
        return Ok(false);
    };
    let spec = cm
        .data
        .as_ref()
        .and_then(|d| d.get(proto::cluster::DATA_KEY))
        .and_then(|s| serde_json::from_str::<ClientSpec>(s).ok());
    Ok(spec.map(|s| &s.public_key == key).unwrap_or(false))
}

pub async fn delete_configmap(c: &Cluster, ns: &str, name: &str) -> Result<bool> {
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
    match cms.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("cannot delete ConfigMap {name}")),
    }
}

/// Deletes the namespace and waits until it is gone.
pub async fn uninstall(c: &Cluster, ns: &str, timeout: Duration) -> Result<bool> {
    let nss: Api<Namespace> = Api::all(c.client.clone());
    if nss.get_opt(ns).await?.is_none() {
        return Ok(false);
    }
    // Stop stowaway first and wait for its Pod to be gone: a namespace whose Pods are
    // already gone is deleted in one pass of the namespace controller (otherwise it
    // retries with a growing back-off, minutes on some clusters).
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    match deployments
        .delete(proto::STOWAWAY_NAME, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(anyhow!(e)).context("cannot delete the stowaway Deployment"),
    }
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let _ = pods
        .delete_collection(
            // stowaway keeps no state: remove the Pod objects at once (the kubelet
            // stops the containers afterwards) instead of waiting on a slow kubelet
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::background()
            },
            &ListParams::default().labels(&stowaway_selector()),
        )
        .await;
    ui::wait_for(
        "stowaway to stop",
        timeout,
        Duration::from_millis(500),
        || {
            let pods = pods.clone();
            async move {
                let n = pods
                    .list(&ListParams::default().labels(&stowaway_selector()))
                    .await?
                    .items
                    .len();
                Ok(if n == 0 {
                    Wait::Done(())
                } else {
                    Wait::NotYet(format!("{n} Pod(s) terminating"))
                })
            }
        },
    )
    .await?;
    match nss.delete(ns, &DeleteParams::foreground()).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Ok(false),
        Err(e) => return Err(anyhow!(e)).with_context(|| format!("cannot delete namespace {ns}")),
    }
    ui::wait_for(
        &format!("namespace {ns} to be deleted"),
        timeout,
        Duration::from_secs(1),
        || {
            let nss = nss.clone();
            async move {
                Ok(match nss.get_opt(ns).await? {
                    None => Wait::Done(()),
                    Some(n) => Wait::NotYet(
                        n.status
                            .and_then(|s| s.phase)
                            .unwrap_or_else(|| "Terminating".into()),
                    ),
                })
            }
        },
    )
    .await?;
    Ok(true)
}

/// The running Pod of a workload and the container to use.
pub async fn workload_pod(
    c: &Cluster,
    ns: &str,
    w: &crate::args::EnvFrom,
) -> Result<(String, String)> {
    use crate::args::WorkloadKind;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let what = format!("{}/{}", w.kind, w.name);
    let pod = match w.kind {
        WorkloadKind::Pod => pods.get_opt(&w.name).await?.ok_or_else(|| {
            anyhow!(
                "pod {} not found in namespace {ns}; check -n and the name",
                w.name
            )
        })?,
        WorkloadKind::Deployment | WorkloadKind::StatefulSet => {
            let selector = if w.kind == WorkloadKind::Deployment {
                let api: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
                let d = api.get_opt(&w.name).await?.ok_or_else(|| {
                    anyhow!(
                        "deployment {} not found in namespace {ns}; check -n and the name",
                        w.name
                    )
                })?;
                d.spec.map(|s| s.selector)
            } else {
                let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), ns);
                let s = api.get_opt(&w.name).await?.ok_or_else(|| {
                    anyhow!(
                        "statefulset {} not found in namespace {ns}; check -n and the name",
                        w.name
                    )
                })?;
                s.spec.map(|s| s.selector)
            };
            let labels = selector
                .and_then(|s| s.match_labels)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            if labels.is_empty() {
                bail!("{what} has no matchLabels selector; use --env-from pod/NAME");
            }
            let list = pods.list(&ListParams::default().labels(&labels)).await?;
            list.items
                .into_iter()
                .find(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .ok_or_else(|| {
                    anyhow!("{what} has no running Pod in namespace {ns}; start it and retry")
                })?
        }
    };
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let container = match &w.container {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => bail!(
            "{what} has no container {c} (it has: {}); fix --env-from",
            containers.join(", ")
        ),
        None => pod
            .annotations()
            .get("kubectl.kubernetes.io/default-container")
            .cloned()
            .or_else(|| containers.first().cloned())
            .ok_or_else(|| anyhow!("{what} has no containers"))?,
    };
    Ok((pod.name_any(), container))
}

/// Runs `env` in the container (kube exec) and returns its variables.
pub async fn workload_env(
    c: &Cluster,
    ns: &str,
    w: &crate::args::EnvFrom,
) -> Result<Vec<(String, String)>> {
    let (pod, container) = workload_pod(c, ns, w).await?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let ap = AttachParams::default()
        .container(container.clone())
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let fut = async {
        let mut proc = pods
            .exec(&pod, vec!["env"], &ap)
            .await
            .with_context(|| format!("cannot exec `env` in {pod}/{container}"))?;
        let mut out = String::new();
        if let Some(mut so) = proc.stdout() {
            so.read_to_string(&mut out).await?;
        }
        let status = proc.take_status();
        if let Some(st) = status {
            if let Some(s) = st.await {
                if s.status.as_deref() == Some("Failure") {
                    bail!(
                        "`env` failed in {pod}/{container}: {}; the image may have no `env` binary",
                        s.message.unwrap_or_default()
                    );
                }
            }
        }
        Ok::<_, anyhow::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| anyhow!("`env` in {pod}/{container} did not finish within 30s"))??;
    Ok(parse_env(&out))
}

/// Variables not copied from a workload (they describe the Pod, not the app).
const ENV_SKIP: &[&str] = &["HOSTNAME", "HOME", "PATH", "TERM", "SHLVL", "PWD", "_"];

pub fn parse_env(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        match line.split_once('=') {
            Some((k, val))
                if !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                if !ENV_SKIP.contains(&k) {
                    v.push((k.to_string(), val.to_string()));
                }
            }
            // continuation of a multi-line value
            _ => {
                if let Some(last) = v.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(line);
                }
            }
        }
    }
    v
}

/// Reads stowaway's `/status` through a port-forward to its Pod.
pub async fn stowaway_status(
    c: &Cluster,
    ns: &str,
    pod: &str,
) -> Result<proto::status::StowawayStatus> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let fut = async {
        let mut pf = pods
            .portforward(pod, &[proto::STOWAWAY_HEALTH_PORT])
            .await
            .context("port-forward to stowaway failed")?;
        let mut s = pf
            .take_stream(proto::STOWAWAY_HEALTH_PORT)
            .ok_or_else(|| anyhow!("port-forward gave no stream"))?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        // read until the server closes or the document is complete
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Ok(Some(body)) = http_body(&buf) {
                if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                    break;
                }
            }
            if buf.len() > 16 * 1024 * 1024 {
                bail!("stowaway's /status is too large");
            }
        }
        drop(s);
        pf.abort();
        let body =
            http_body(&buf)?.ok_or_else(|| anyhow!("incomplete answer from stowaway's /status"))?;
        serde_json::from_slice(&body).context("stowaway's /status is not valid JSON")
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow!("stowaway's /status did not answer within 10s"))?
}

/// The body of an HTTP/1.1 response once complete (Content-Length or chunked).
pub fn http_body(buf: &[u8]) -> Result<Option<Vec<u8>>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status_line = head.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer: {status_line}"))?;
    if code != 200 {
        bail!("stowaway answered {status_line}");
    }
    let body = &buf[end + 4..];
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
        })
    };
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        return Ok((body.len() >= len).then(|| body[..len].to_vec()));
    }
    if header("transfer-encoding").map(|t| t.eq_ignore_ascii_case("chunked")) == Some(true) {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let Some(le) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_s = String::from_utf8_lossy(&rest[..le]).to_string();
            let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| anyhow!("bad chunk size"))?;
            rest = &rest[le + 2..];
            if size == 0 {
                return Ok(Some(out));
            }
            if rest.len() < size + 2 {
                return Ok(None);
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
    Ok(Some(body.to_vec()))
}

/// Does this identity have `verb` on `resource` (SelfSubjectAccessReview)?
pub async fn can_i(
    c: &Cluster,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
    ns: Option<&str>,
) -> Result<bool> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(c.client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(str::to_string),
                namespace: ns.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = api.create(&PostParams::default(), &review).await?;
    Ok(r.status.map(|s| s.allowed).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_output() {
        let v = parse_env("PATH=/bin\nA=1\nB=x=y\nHOSTNAME=pod\nM=line1\nline2\n");
        assert_eq!(
            v,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string()),
                ("M".to_string(), "line1\nline2".to_string())
            ]
        );
    }

    #[test]
    fn http_bodies() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(http_body(r).unwrap().unwrap(), b"{}");
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}";
        assert_eq!(http_body(r).unwrap(), None);
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(http_body(r).unwrap().unwrap(), b"{}");
        assert!(http_body(b"HTTP/1.1 500 x\r\n\r\n").is_err());
    }
}
