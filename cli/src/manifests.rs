//! The cluster side as typed objects. Only fields Kubernetes v1.20 knows are set.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proto::cluster::ClientSpec;
use std::collections::BTreeMap;

/// How the WireGuard Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ServiceType {
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_k8s(self) -> &'static str {
        match self {
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What `up` installs.
#[derive(Debug, Clone)]
pub struct Install {
    pub namespace: String,
    pub stowaway_image: String,
    pub service_type: ServiceType,
    pub node_port: u16,
}

pub fn labels(role: &str) -> BTreeMap<String, String> {
    [
        (proto::LABEL_APP.to_string(), proto::APP_NAME.to_string()),
        (proto::LABEL_ROLE.to_string(), role.to_string()),
    ]
    .into()
}

fn meta(name: &str, namespace: Option<&str>, role: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels(role)),
        ..Default::default()
    }
}

pub fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: meta(name, None, proto::ROLE_STOWAWAY),
        ..Default::default()
    }
}

pub fn service_account(ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(
            proto::STOWAWAY_SERVICE_ACCOUNT,
            Some(ns),
            proto::ROLE_STOWAWAY,
        ),
        ..Default::default()
    }
}

/// Stowaway may only read ConfigMaps in its own namespace.
pub fn role(ns: &str) -> Role {
    Role {
        metadata: meta(proto::STOWAWAY_ROLE, Some(ns), proto::ROLE_STOWAWAY),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_string()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    }
}

pub fn role_binding(ns: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(proto::STOWAWAY_ROLE, Some(ns), proto::ROLE_STOWAWAY),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: proto::STOWAWAY_ROLE.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: proto::STOWAWAY_SERVICE_ACCOUNT.to_string(),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }]),
    }
}

/// The Secret with stowaway's key pair (generated at install).
pub fn secret(ns: &str, private_key: &proto::keys::Key, public_key: &proto::keys::Key) -> Secret {
    Secret {
        metadata: meta(proto::STOWAWAY_SECRET, Some(ns), proto::ROLE_STOWAWAY),
        type_: Some("Opaque".to_string()),
        string_data: Some(
            [
                (
                    proto::SECRET_PRIVATE_KEY.to_string(),
                    private_key.to_base64(),
                ),
                (proto::SECRET_PUBLIC_KEY.to_string(), public_key.to_base64()),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: Some("v1".to_string()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_string()),
            port: IntOrString::Int(i32::from(proto::STOWAWAY_HEALTH_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        success_threshold: Some(1),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// Deployment `gefyra-stowaway`: restricted security settings, key from the
/// Secret, own namespace and Pod IP from the downward API, quick readiness.
pub fn deployment(i: &Install) -> Deployment {
    let mut m = meta(
        proto::STOWAWAY_NAME,
        Some(&i.namespace),
        proto::ROLE_STOWAWAY,
    );
    m.annotations = Some(
        [(
            proto::ANNOTATION_VERSION.to_string(),
            proto::VERSION.to_string(),
        )]
        .into(),
    );
    let uid = i64::from(proto::IMAGE_UID);
    let container = Container {
        name: "stowaway".to_string(),
        image: Some(i.stowaway_image.clone()),
        image_pull_policy: Some("Always".to_string()),
        env: Some(vec![
            env_field(proto::ENV_STOWAWAY_NAMESPACE, "metadata.namespace"),
            EnvVar {
                name: proto::ENV_STOWAWAY_PRIVATE_KEY.to_string(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: proto::STOWAWAY_SECRET.to_string(),
                        key: proto::SECRET_PRIVATE_KEY.to_string(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            env_field(proto::ENV_POD_IP, "status.podIP"),
            EnvVar {
                name: proto::ENV_LOG.to_string(),
                value: Some("info".to_string()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("wireguard".to_string()),
                container_port: i32::from(proto::WIREGUARD_PORT),
                protocol: Some("UDP".to_string()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("health".to_string()),
                container_port: i32::from(proto::STOWAWAY_HEALTH_PORT),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe(1, 2)),
        liveness_probe: Some(http_probe(10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), Quantity("50m".to_string())),
                    ("memory".to_string(), Quantity("32Mi".to_string())),
                ]
                .into(),
            ),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: m,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels(proto::ROLE_STOWAWAY)),
                ..Default::default()
            },
            // never two stowaways serving one Service at once
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(proto::ROLE_STOWAWAY)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(proto::STOWAWAY_SERVICE_ACCOUNT.to_string()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(5),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(uid),
                        run_as_group: Some(uid),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The WireGuard Service (NodePort 31820/UDP by default).
pub fn service(i: &Install) -> Service {
    Service {
        metadata: meta(
            proto::STOWAWAY_SERVICE,
            Some(&i.namespace),
            proto::ROLE_STOWAWAY,
        ),
        spec: Some(ServiceSpec {
            type_: Some(i.service_type.as_k8s().to_string()),
            selector: Some(labels(proto::ROLE_STOWAWAY)),
            ports: Some(vec![ServicePort {
                name: Some("wireguard".to_string()),
                protocol: Some("UDP".to_string()),
                port: i32::from(proto::WIREGUARD_PORT),
                target_port: Some(IntOrString::Int(i32::from(proto::WIREGUARD_PORT))),
                node_port: Some(i32::from(i.node_port)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A client registration ConfigMap.
pub fn client_configmap(ns: &str, spec: &ClientSpec) -> Result<ConfigMap, serde_json::Error> {
    let mut m = meta(
        &proto::cluster::client_configmap_name(spec.tunnel_ip),
        Some(ns),
        proto::ROLE_CLIENT,
    );
    if let Some(l) = m.labels.as_mut() {
        l.insert(proto::LABEL_CONNECTION.to_string(), spec.connection.clone());
    }
    Ok(ConfigMap {
        metadata: m,
        data: Some(
            [(
                proto::cluster::DATA_KEY.to_string(),
                serde_json::to_string(spec)?,
            )]
            .into(),
        ),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> Install {
        Install {
            namespace: "gefyra".into(),
            stowaway_image: "127.0.0.1:5000/gefyra-stowaway:0.1.0".into(),
            service_type: ServiceType::NodePort,
            node_port: 31820,
        }
    }

    #[test]
    fn deployment_is_restricted() {
        let d = deployment(&install());
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(
            v["metadata"]["annotations"][proto::ANNOTATION_VERSION],
            proto::VERSION
        );
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["serviceAccountName"], proto::STOWAWAY_SERVICE_ACCOUNT);
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert!(sc["capabilities"].get("add").is_none());
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(pod.get("hostNetwork").is_none());
        assert!(pod.get("volumes").is_none(), "no hostPath or other volume");
        // probe quick enough that a replaced stowaway is back within seconds
        let r = &c["readinessProbe"];
        assert_eq!(r["httpGet"]["path"], "/healthz");
        assert_eq!(r["httpGet"]["port"], 8090);
        assert!(r["periodSeconds"].as_i64().unwrap() <= 2);
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for n in [
            proto::ENV_STOWAWAY_NAMESPACE,
            proto::ENV_STOWAWAY_PRIVATE_KEY,
            proto::ENV_POD_IP,
        ] {
            assert!(env.contains(&n), "{n} missing in {env:?}");
        }
        let key = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == proto::ENV_STOWAWAY_PRIVATE_KEY)
            .unwrap();
        assert_eq!(
            key["valueFrom"]["secretKeyRef"]["name"],
            proto::STOWAWAY_SECRET
        );
        assert!(key.get("value").is_none(), "the key comes from the Secret");
    }

    #[test]
    fn rbac_is_configmaps_read_only() {
        let r = serde_json::to_value(role("ns")).unwrap();
        assert_eq!(r["metadata"]["namespace"], "ns");
        let rules = r["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["resources"], serde_json::json!(["configmaps"]));
        assert_eq!(
            rules[0]["verbs"],
            serde_json::json!(["get", "list", "watch"])
        );
        let b = serde_json::to_value(role_binding("ns")).unwrap();
        assert_eq!(b["subjects"][0]["name"], proto::STOWAWAY_SERVICE_ACCOUNT);
        assert_eq!(b["roleRef"]["kind"], "Role");
    }

    #[test]
    fn service_and_client() {
        let mut i = install();
        i.node_port = 31999;
        let s = serde_json::to_value(service(&i)).unwrap();
        assert_eq!(s["spec"]["type"], "NodePort");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 31999);
        let spec = ClientSpec {
            connection: "default".into(),
            public_key: proto::keys::Key([3; 32]),
            tunnel_ip: proto::client_tunnel_ip(2),
            subnet: "172.30.5.0/24".parse().unwrap(),
        };
        let cm = client_configmap("gefyra", &spec).unwrap();
        assert_eq!(
            cm.metadata.name.as_deref(),
            Some("gefyra-client-192-168-99-2")
        );
        let labels = cm.metadata.labels.unwrap();
        assert_eq!(labels[proto::LABEL_ROLE], proto::ROLE_CLIENT);
        assert_eq!(labels[proto::LABEL_CONNECTION], "default");
        let doc = &cm.data.unwrap()[proto::cluster::DATA_KEY];
        assert_eq!(serde_json::from_str::<ClientSpec>(doc).unwrap(), spec);
    }
}
