//! demo-kube: the few Kubernetes verbs `./demo.sh` needs, so a fresh machine needs no kubectl
//! (kube-rs, `$KUBECONFIG`). Prints one line per result; exit 0 on success, 1 with a reason.
//!
//! ```text
//! demo-kube apply FILE|-                 server-side apply of multi-document YAML (in order)
//! demo-kube delete FILE|- [SECS]         delete its objects (reverse order), wait for them to be gone
//! demo-kube exists KIND NAME [NS]        exit 0 when the object exists (namespace|deployment|service)
//! demo-kube wait-ready NS DEPLOY [SECS]  wait for the rollout: one Ready Pod; prints "POD POD_IP"
//! demo-kube service-ip NS SVC            prints the Service's ClusterIP
//! demo-kube images NS POD                prints "CONTAINER IMAGE" of the Pod's running containers
//! demo-kube remove-gefyra NS [SECS]      remove gefyra's cluster side (namespace NS) unless another
//!                                        client is still registered there (what `gefyra down --all`
//!                                        does, without touching other connections' local containers)
//! ```
#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiResource, Scope};
use kube::Client;
use serde::Deserialize;
use std::io::Read;
use std::time::{Duration, Instant};

const MANAGER: &str = "gefyra-demo";

const USAGE: &str =
    "usage: demo-kube apply FILE|- | delete FILE|- [SECS] | exists KIND NAME [NS] | \
wait-ready NS DEPLOY [SECS] | service-ip NS SVC | images NS POD | remove-gefyra NS [SECS]";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("demo-kube: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: &[String]) -> Result<i32> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let secs = |s: Option<&&str>, d: u64| -> Result<Duration> {
        Ok(Duration::from_secs(match s {
            Some(s) => s
                .parse()
                .with_context(|| format!("{s}: not a number of seconds"))?,
            None => d,
        }))
    };
    match a.as_slice() {
        ["apply", file] => {
            let client = client().await?;
            apply(&client, &read_docs(file)?).await?;
            Ok(0)
        }
        ["delete", file, rest @ ..] => {
            let client = client().await?;
            delete(&client, &read_docs(file)?, secs(rest.first(), 120)?).await?;
            Ok(0)
        }
        ["exists", kind, name, rest @ ..] => {
            let client = client().await?;
            let ns = rest.first().copied().unwrap_or("default");
            let found = match *kind {
                "namespace" => Api::<Namespace>::all(client).get_opt(name).await?.is_some(),
                "deployment" => Api::<Deployment>::namespaced(client, ns)
                    .get_opt(name)
                    .await?
                    .is_some(),
                "service" => Api::<Service>::namespaced(client, ns)
                    .get_opt(name)
                    .await?
                    .is_some(),
                k => bail!("exists: unknown kind {k} (namespace, deployment, service)"),
            };
            Ok(if found { 0 } else { 1 })
        }
        ["wait-ready", ns, deploy, rest @ ..] => {
            let client = client().await?;
            let (pod, ip) = wait_ready(&client, ns, deploy, secs(rest.first(), 180)?).await?;
            println!("{pod} {ip}");
            Ok(0)
        }
        ["service-ip", ns, svc] => {
            let client = client().await?;
            let s = Api::<Service>::namespaced(client, ns)
                .get(svc)
                .await
                .with_context(|| format!("service {ns}/{svc}"))?;
            let ip = s
                .spec
                .and_then(|s| s.cluster_ip)
                .ok_or_else(|| anyhow!("service {ns}/{svc} has no ClusterIP"))?;
            println!("{ip}");
            Ok(0)
        }
        ["images", ns, pod] => {
            let client = client().await?;
            let p = Api::<Pod>::namespaced(client, ns)
                .get(pod)
                .await
                .with_context(|| format!("pod {ns}/{pod}"))?;
            for c in p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
            {
                let running = c.state.as_ref().and_then(|s| s.running.as_ref()).is_some();
                println!(
                    "{} {}{}",
                    c.name,
                    c.image,
                    if running { "" } else { " (not running)" }
                );
            }
            Ok(0)
        }
        ["remove-gefyra", ns, rest @ ..] => {
            let client = client().await?;
            remove_gefyra(&client, ns, secs(rest.first(), 120)?).await?;
            Ok(0)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    }
}

async fn client() -> Result<Client> {
    Client::try_default()
        .await
        .context("no cluster: set KUBECONFIG (eval \"$(testbed/bed.sh env)\")")
}

fn read_docs(file: &str) -> Result<Vec<DynamicObject>> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
    }
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).context("YAML")?;
        if v.is_null() {
            continue; // an empty document (comments only)
        }
        let o: DynamicObject =
            serde_yaml::from_value(v).context("a document is not a Kubernetes object")?;
        if o.types.is_none() || o.metadata.name.is_none() {
            bail!("every document needs apiVersion, kind and metadata.name");
        }
        out.push(o);
    }
    Ok(out)
}

/// The API of an object's kind (discovered), namespaced where the kind is.
async fn api_for(client: &Client, o: &DynamicObject) -> Result<(Api<DynamicObject>, String)> {
    let t = o
        .types
        .as_ref()
        .ok_or_else(|| anyhow!("no apiVersion/kind"))?;
    let (group, version) = match t.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", t.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &t.kind);
    let (ar, caps): (ApiResource, _) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the cluster does not serve {}/{}", t.api_version, t.kind))?;
    let name = o.metadata.name.clone().unwrap_or_default();
    Ok(match caps.scope {
        Scope::Cluster => (
            Api::all_with(client.clone(), &ar),
            format!("{}/{name}", t.kind.to_lowercase()),
        ),
        Scope::Namespaced => {
            let ns = o
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            (
                Api::namespaced_with(client.clone(), &ns, &ar),
                format!("{}/{name} in {ns}", t.kind.to_lowercase()),
            )
        }
    })
}

async fn apply(client: &Client, docs: &[DynamicObject]) -> Result<()> {
    for o in docs {
        let (api, what) = api_for(client, o).await?;
        let name = o.metadata.name.as_deref().unwrap_or_default();
        // a namespace still terminating from an earlier run cannot take new objects: wait it out
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let cur = api.get_opt(name).await?;
            let terminating = cur
                .as_ref()
                .is_some_and(|c| c.metadata.deletion_timestamp.is_some());
            if !terminating {
                break;
            }
            if Instant::now() > deadline {
                bail!("{what} is still being deleted after 120 s");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(o))
            .await
            .with_context(|| format!("apply {what}"))?;
        println!("applied {what}");
    }
    Ok(())
}

/// Deletes in reverse order, each object gone before the next: a namespace whose Pods are already
/// gone is removed in one pass of the namespace controller (otherwise it retries with back-off).
async fn delete(client: &Client, docs: &[DynamicObject], wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    for o in docs.iter().rev() {
        let (api, what) = api_for(client, o).await?;
        let name = o.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::foreground()).await {
            Ok(_) => println!("deleting {what}"),
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e).with_context(|| format!("delete {what}")),
        }
        while api.get_opt(&name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("{what} still exists after {} s", wait.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// Waits until the Deployment's rollout is complete and exactly one Pod of it exists and is Ready.
async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    wait: Duration,
) -> Result<(String, String)> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + wait;
    let mut last = String::from("not found");
    loop {
        if let Some(d) = deployments.get_opt(name).await? {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            let selector = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            let ready: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                })
                .collect();
            last = format!(
                "{}/{want} updated, {} ready, {} Pod(s)",
                st.updated_replicas.unwrap_or(0),
                st.ready_replicas.unwrap_or(0),
                list.items.len()
            );
            if want == 1
                && st.updated_replicas == Some(1)
                && ready.len() == 1
                && list.items.len() == 1
            {
                let p = ready[0];
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default();
                return Ok((p.metadata.name.clone().unwrap_or_default(), ip));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "deployment {ns}/{name} not ready after {} s ({last})",
                wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes gefyra's namespace (stowaway first, so the namespace goes in one pass) unless a client
/// or bridge ConfigMap shows that someone else still uses it.
async fn remove_gefyra(client: &Client, ns: &str, wait: Duration) -> Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(ns).await?.is_none() {
        println!("namespace {ns} is not there");
        return Ok(());
    }
    let users = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("gefyra.dev/role in (client,bridge)"))
        .await?
        .items
        .len();
    if users > 0 {
        println!("namespace {ns} kept: {users} other client registration(s) or bridge(s) in use");
        return Ok(());
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    match deployments
        .delete("gefyra-stowaway", &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e).context("delete the stowaway Deployment"),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + wait;
    while !pods.list(&ListParams::default()).await?.items.is_empty() && Instant::now() < deadline {
        let _ = pods
            .delete_collection(
                &DeleteParams {
                    grace_period_seconds: Some(1),
                    ..DeleteParams::background()
                },
                &ListParams::default(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match nss.delete(ns, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e).with_context(|| format!("delete namespace {ns}")),
    }
    while nss.get_opt(ns).await?.is_some() {
        if Instant::now() > deadline {
            bail!("namespace {ns} still exists after {} s", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("namespace {ns} removed");
    Ok(())
}
