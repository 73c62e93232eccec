//! Turning a Ship into the [`VmSpec`] a runtime runs: its ShipClass (vCPUs, memory, maxima,
//! machine type), its RuntimeClass (machine), its cloud-init Secrets, its port mappings.
//! Runtimes never talk to the apiserver; everything they need is resolved here.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use tugboat_api::kinds::core::{RuntimeClassSpec, ShipClassSpec, ShipSpec};
use tugboat_api::kinds::parse_quantity;

use crate::agent::RESTART_ANNOTATION;
use crate::runtime::{CloudInitData, CpuSpec, PortForward, VmSpec};
use tugboat_api::registries::{self, RegistryHosts};

/// Why a Ship cannot become a VM yet.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// An apiserver request failed (retried with backoff).
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// The ShipClass does not exist.
    #[error("ShipClass {0:?} not found")]
    ShipClassNotFound(String),
    /// A referenced Secret or key does not exist.
    #[error("{0}")]
    SecretNotFound(String),
    /// Something in the Ship or its classes is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The cluster's registry settings (ConfigMap `tugboat-system/registries`) are unreadable.
    #[error("ConfigMap tugboat-system/registries: {0}")]
    RegistrySettings(String),
}

impl ResolveError {
    /// The `status.reason` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::Kube(_) => "ApiError",
            ResolveError::ShipClassNotFound(_) => "ShipClassNotFound",
            ResolveError::SecretNotFound(_) => "SecretNotFound",
            ResolveError::Invalid(_) => "InvalidSpec",
            ResolveError::RegistrySettings(_) => "InvalidRegistrySettings",
        }
    }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", kind), plural)
}

fn bytes_of(q: &str, what: &str) -> Result<u64, ResolveError> {
    let v = parse_quantity(q).map_err(|e| ResolveError::Invalid(format!("{what}: {e}")))?;
    if !(v.is_finite() && v > 0.0 && v < 1e18) {
        return Err(ResolveError::Invalid(format!(
            "{what}: {q} is out of range"
        )));
    }
    Ok(v.ceil() as u64)
}

fn count(v: Option<i32>, what: &str) -> Result<u32, ResolveError> {
    match v {
        None => Ok(0),
        Some(n) if (1..=512).contains(&n) => Ok(n as u32),
        Some(n) => Err(ResolveError::Invalid(format!(
            "{what} must be between 1 and 512, got {n}"
        ))),
    }
}

/// The cluster's registry settings (mirrors, plain-HTTP hosts) for pulls on this node; a
/// cluster without the ConfigMap has none.
pub async fn registry_hosts(client: &Client) -> Result<RegistryHosts, ResolveError> {
    let maps: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        registries::NAMESPACE,
        &resource("ConfigMap", "configmaps"),
    );
    let cm = match maps.get_opt(registries::NAME).await {
        Ok(Some(cm)) => cm,
        Ok(None) => return Ok(RegistryHosts::default()),
        // An apiserver that does not let nodes read it (an older one during an upgrade) or a
        // passing error must not stop every VM of the node: pull with the node's own settings.
        Err(e) => {
            tracing::warn!(error = %e, "reading the cluster's registry settings; pulling without them");
            return Ok(RegistryHosts::default());
        }
    };
    let data: Option<BTreeMap<String, String>> = match cm.data.get("data") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| ResolveError::RegistrySettings(format!("data: {e}")))?,
        ),
    };
    registries::from_config_map_data(data.as_ref())
        .map_err(|e| ResolveError::RegistrySettings(e.to_string()))
}

async fn secret_key(
    client: &Client,
    namespace: &str,
    name: &str,
    keys: &[&str],
) -> Result<String, ResolveError> {
    let secrets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource("Secret", "secrets"));
    let secret = secrets.get_opt(name).await?.ok_or_else(|| {
        ResolveError::SecretNotFound(format!("Secret {namespace}/{name} not found"))
    })?;
    let data: BTreeMap<String, ByteString> = secret
        .data
        .get("data")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ResolveError::Invalid(format!("Secret {namespace}/{name}: {e}")))?
        .unwrap_or_default();
    for key in keys {
        if let Some(v) = data.get(*key) {
            return String::from_utf8(v.0.clone()).map_err(|_| {
                ResolveError::Invalid(format!("Secret {namespace}/{name} key {key} is not UTF-8"))
            });
        }
    }
    Err(ResolveError::SecretNotFound(format!(
        "Secret {namespace}/{name} has no key {}",
        keys.join(" or ")
    )))
}

/// Builds the VmSpec for `ship` (whose `spec` is already decoded).
pub async fn resolve_vm_spec(
    client: &Client,
    ship: &DynamicObject,
    spec: &ShipSpec,
) -> Result<VmSpec, ResolveError> {
    let uid = ship
        .uid()
        .ok_or_else(|| ResolveError::Invalid("Ship has no metadata.uid".into()))?;
    let namespace = ship.namespace().unwrap_or_default();
    let name = ship.name_any();

    let classes: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("ShipClass", "shipclasses"));
    let class_obj = classes
        .get_opt(&spec.ship_class)
        .await?
        .ok_or_else(|| ResolveError::ShipClassNotFound(spec.ship_class.clone()))?;
    let class: ShipClassSpec =
        serde_json::from_value(class_obj.data.get("spec").cloned().unwrap_or_default())
            .map_err(|e| ResolveError::Invalid(format!("ShipClass {}: {e}", spec.ship_class)))?;

    let runtime_class: Option<RuntimeClassSpec> = match &spec.runtime_class {
        None => None,
        Some(rc) => {
            let api: Api<DynamicObject> =
                Api::all_with(client.clone(), &resource("RuntimeClass", "runtimeclasses"));
            match api.get_opt(rc).await? {
                Some(o) => serde_json::from_value(o.data.get("spec").cloned().unwrap_or_default())
                    .map_err(|e| ResolveError::Invalid(format!("RuntimeClass {rc}: {e}")))?,
                None => {
                    return Err(ResolveError::Invalid(format!(
                        "RuntimeClass {rc:?} not found"
                    )))
                }
            }
        }
    };

    let cores = count(Some(class.cpu.cores.max(1)), "ShipClass cpu.cores")?;
    let max_cores = match class.cpu.max_cores {
        None => None,
        Some(m) => Some(count(Some(m), "ShipClass cpu.maxCores")?),
    };
    let memory_bytes = bytes_of(&class.memory.size.0, "ShipClass memory.size")?;
    let max_memory_bytes = class
        .memory
        .max_size
        .as_ref()
        .map(|q| bytes_of(&q.0, "ShipClass memory.maxSize"))
        .transpose()?;

    let cloud_init = match &spec.cloud_init {
        None => None,
        Some(ci) => {
            let user_data = match (&ci.user_data, &ci.user_data_secret_ref) {
                (Some(u), _) => Some(u.clone()),
                (None, Some(r)) => Some(
                    secret_key(
                        client,
                        &namespace,
                        &r.name,
                        &["userdata", "userData", "user-data"],
                    )
                    .await?,
                ),
                (None, None) => None,
            };
            let network_data = match (&ci.network_data, &ci.network_data_secret_ref) {
                (Some(n), _) => Some(n.clone()),
                (None, Some(r)) => Some(
                    secret_key(
                        client,
                        &namespace,
                        &r.name,
                        &["networkdata", "networkData", "network-config"],
                    )
                    .await?,
                ),
                (None, None) => None,
            };
            Some(CloudInitData {
                user_data,
                network_data,
            })
        }
    };

    let mut port_forwards = Vec::new();
    for p in &spec.port_mappings {
        let port = |v: i32, what: &str| {
            u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| {
                ResolveError::Invalid(format!("portMappings {what} {v} is not a port"))
            })
        };
        port_forwards.push(PortForward {
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            host_ip: p.host_ip.clone(),
            host_port: port(p.host_port, "hostPort")?,
            guest_port: port(p.guest_port, "guestPort")?,
        });
    }

    Ok(VmSpec {
        uid,
        namespace,
        name: name.clone(),
        image: spec.image.clone(),
        hostname: spec.hostname.clone().unwrap_or(name),
        cpu: CpuSpec {
            cores,
            sockets: count(class.cpu.sockets, "ShipClass cpu.sockets")?,
            threads: count(class.cpu.threads, "ShipClass cpu.threads")?,
            max_cores,
            model: class.cpu.model.clone(),
        },
        memory_bytes,
        max_memory_bytes,
        machine: class
            .machine_type
            .clone()
            .or_else(|| runtime_class.and_then(|r| r.machine)),
        cloud_init,
        port_forwards,
        restart_token: ship.annotations().get(RESTART_ANNOTATION).cloned(),
        stop_grace_secs: spec
            .termination_grace_period_seconds
            .map(|s| u32::try_from(s.clamp(0, 3600)).unwrap_or(30)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_bytes_and_bad_ones_are_named() {
        assert_eq!(bytes_of("4Gi", "m").unwrap(), 4 << 30);
        assert_eq!(bytes_of("192Mi", "m").unwrap(), 192 << 20);
        assert_eq!(bytes_of("1G", "m").unwrap(), 1_000_000_000);
        let e = bytes_of("lots", "ShipClass memory.size").unwrap_err();
        assert!(e.to_string().contains("ShipClass memory.size"), "{e}");
        assert!(bytes_of("0", "m").is_err());
        assert!(bytes_of("-1Gi", "m").is_err());
    }

    #[test]
    fn counts_are_bounded() {
        assert_eq!(count(None, "c").unwrap(), 0);
        assert_eq!(count(Some(4), "c").unwrap(), 4);
        assert!(count(Some(0), "c").is_err());
        assert!(count(Some(513), "c").is_err());
    }

    #[test]
    fn reasons_name_the_problem() {
        assert_eq!(
            ResolveError::ShipClassNotFound("x".into()).reason(),
            "ShipClassNotFound"
        );
        assert_eq!(ResolveError::Invalid("x".into()).reason(), "InvalidSpec");
    }
}
