//! The cluster's records: a kube-rs watch (reflector) of Services and Endpoints in all namespaces.

use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::zone::{dashed_ip, Zone, ZoneLookup};

/// Records from the API server, kept current by two watches.
#[derive(Clone)]
pub struct ClusterZone {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
}

impl ClusterZone {
    /// Starts the watches (tasks that retry with backoff) and waits until both
    /// have listed once.
    pub async fn start(client: Client) -> Result<Self, reflector::store::WriterDropped> {
        let (services, svc_writer) = reflector::store::<Service>();
        let (endpoints, ep_writer) = reflector::store::<Endpoints>();
        let svc = reflector::reflector(
            svc_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        );
        let ep = reflector::reflector(
            ep_writer,
            watcher(Api::<Endpoints>::all(client), watcher::Config::default()).default_backoff(),
        );
        tokio::spawn(svc.for_each(|ev| async move {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch of Services failed; retrying");
            }
        }));
        tokio::spawn(ep.for_each(|ev| async move {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch of Endpoints failed; retrying");
            }
        }));
        services.wait_until_ready().await?;
        endpoints.wait_until_ready().await?;
        Ok(Self {
            services,
            endpoints,
        })
    }

    /// Ready endpoint addresses of a Service, with their hostnames.
    fn addresses(&self, ns: &str, name: &str) -> Vec<(Ipv4Addr, Option<String>)> {
        let Some(ep) = self.endpoints.get(&ObjectRef::new(name).within(ns)) else {
            return vec![];
        };
        let mut out = vec![];
        for subset in ep.subsets.iter().flatten() {
            for a in subset.addresses.iter().flatten() {
                if let Ok(ip) = a.ip.parse::<Ipv4Addr>() {
                    out.push((ip, a.hostname.clone()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn headless(svc: &Service) -> bool {
        svc.spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .is_none_or(|ip| ip == "None" || ip.is_empty())
    }
}

impl Zone for ClusterZone {
    fn service(&self, ns: &str, name: &str) -> ZoneLookup {
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            return ZoneLookup::NotFound;
        };
        if Self::headless(&svc) {
            return ZoneLookup::Found(
                self.addresses(ns, name)
                    .into_iter()
                    .map(|(ip, _)| ip)
                    .collect(),
            );
        }
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        ZoneLookup::Found(ip.into_iter().collect())
    }

    fn endpoint(&self, ns: &str, service: &str, host: &str) -> ZoneLookup {
        match self.services.get(&ObjectRef::new(service).within(ns)) {
            Some(svc) if Self::headless(&svc) => {}
            _ => return ZoneLookup::NotFound,
        }
        let by_ip = dashed_ip(host);
        let ips: Vec<Ipv4Addr> = self
            .addresses(ns, service)
            .into_iter()
            .filter(|(ip, h)| h.as_deref() == Some(host) || Some(*ip) == by_ip)
            .map(|(ip, _)| ip)
            .collect();
        if ips.is_empty() {
            ZoneLookup::NotFound
        } else {
            ZoneLookup::Found(ips)
        }
    }
}
