//! The core group (`v1`): Ship and its classes, Node, Namespace, configuration, storage, events.

use super::common::{
    age_cell, age_column, check_config_key, check_enum, check_label, check_non_negative,
    check_quantity, check_subdomain, col, human_age_of, name_cell, name_column, require_subdomain,
    validate_conditions, Condition,
};
use super::typed::Kind;
use crate::error::FieldError;
use crate::registry::Column;
use base64::Engine;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Declares a top-level kind struct: `apiVersion`, `kind`, `metadata` and the given fields.
macro_rules! kind_struct {
    ($(#[$m:meta])* $name:ident, $schema:literal { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(
            ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema, Clone, Debug, Default,
        )]
        #[serde(rename_all = "camelCase", default)]
        #[schemars(rename = $schema)]
        pub struct $name {
            /// APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.
            #[serde(skip_serializing_if = "String::is_empty")]
            pub api_version: String,
            /// Kind is a string value representing the REST resource this object represents. In CamelCase.
            #[serde(skip_serializing_if = "String::is_empty")]
            pub kind: String,
            /// Standard object's metadata.
            pub metadata: ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            $($body)*
        }
    };
}
pub(crate) use kind_struct;

/// Values of `Ship.status.phase`.
pub const SHIP_PHASES: &[&str] = &[
    "Pending",
    "Scheduled",
    "Starting",
    "Running",
    "Stopping",
    "Stopped",
    "Migrating",
    "Failed",
    "Unknown",
];

/// Values of `Ship.spec.runStrategy`.
pub const RUN_STRATEGIES: &[&str] = &["Always", "Halted", "Manual", "RerunOnFailure"];

/// Values of `Ship.status.migration.phase`.
pub const MIGRATION_PHASES: &[&str] = &["Pending", "Ready", "Migrating", "Completed", "Failed"];

// =============================================================================================
// Ship
// =============================================================================================

kind_struct! {
    /// Ship is a virtual machine instance: one QEMU process on one node, the Tugboat analogue of a Pod.
    Ship, "io.tugboat.core.v1.Ship" {
        /// Desired state of the virtual machine.
        pub spec: ShipSpec,
        /// Observed state of the virtual machine, written by the scheduler and the agent.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<ShipStatus>,
    }
}

/// Desired state of a Ship.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipSpec")]
pub struct ShipSpec {
    /// VM image to boot: an OCI artifact reference such as `ghcr.io/org/images/ubuntu:24.04`.
    #[schemars(extend("x-required" = true))]
    pub image: String,
    /// Name of the ShipClass (machine type: CPU and memory) of this VM.
    #[schemars(extend("x-required" = true))]
    pub ship_class: String,
    /// Name of the RuntimeClass whose capabilities (live migration, hotplug) this VM requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// Node the VM runs on. Set by the scheduler; setting it by hand bypasses scheduling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Node the VM should live-migrate to. Setting it on a running Ship starts a migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node_name: Option<String>,
    /// Labels a node must carry for the VM to be scheduled there.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints of nodes this VM tolerates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s::Toleration>,
    /// Scheduling constraints: node affinity and ship (anti-)affinity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<ShipAffinity>,
    /// How Ships matching a label selector spread over topology domains (zones, hosts), in the Kubernetes Pod `topologySpreadConstraints` shape.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<k8s::TopologySpreadConstraint>,
    /// Disks and shares attached to the VM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ShipVolume>,
    /// Name of a NetworkClass in the Ship's namespace that provides the VM's network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_class_name: Option<String>,
    /// Name of a ClusterNetworkClass that provides the VM's network (instead of a NetworkClass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_network_class_name: Option<String>,
    /// Host ports forwarded to the VM (needs the CNI `portmap` plugin).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// cloud-init data passed to the guest (NoCloud).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    /// When the VM should be running: `Always` (default, restart whenever it stops), `Halted` (keep it stopped), `Manual` (start once, never restart), `RerunOnFailure` (restart only after a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "Halted", "Manual", "RerunOnFailure"]))]
    pub run_strategy: Option<String>,
    /// Seconds the guest gets to shut down after an ACPI power-off before it is killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Hostname of the guest; defaults to the Ship name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Node affinity and Ship (anti-)affinity, in the Kubernetes Pod affinity shape.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipAffinity")]
pub struct ShipAffinity {
    /// Node affinity scheduling rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<k8s::NodeAffinity>,
    /// Co-locate this Ship with Ships matching the terms (label selectors select Ships).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ship_affinity: Option<k8s::PodAffinity>,
    /// Keep this Ship away from Ships matching the terms (label selectors select Ships).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ship_anti_affinity: Option<k8s::PodAntiAffinity>,
}

/// A volume attached to a Ship; exactly one source must be set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipVolume")]
pub struct ShipVolume {
    /// Name of the volume, a DNS label unique within the Ship; also the 9p mount tag in the guest.
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// A PersistentVolumeClaim in the Ship's namespace (CSI-backed disk or filesystem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimVolumeSource>,
    /// A ConfigMap projected into the guest as files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret projected into the guest as files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// Deprecated: legacy reference to a PersistentVolumeClaim; use `persistentVolumeClaim`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_claim_ref: Option<VolumeClaimRef>,
}

impl ShipVolume {
    fn sources(&self) -> Vec<&'static str> {
        let mut s = Vec::new();
        if self.persistent_volume_claim.is_some() {
            s.push("persistentVolumeClaim");
        }
        if self.config_map.is_some() {
            s.push("configMap");
        }
        if self.secret.is_some() {
            s.push("secret");
        }
        if self.volume_claim_ref.is_some() {
            s.push("volumeClaimRef");
        }
        s
    }
}

/// Reference to a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ClaimVolumeSource")]
pub struct ClaimVolumeSource {
    /// Name of the PersistentVolumeClaim in the Ship's namespace.
    #[schemars(extend("x-required" = true))]
    pub claim_name: String,
    /// Attach the volume read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Legacy claim reference.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.VolumeClaimRef")]
pub struct VolumeClaimRef {
    /// Name of the PersistentVolumeClaim in the Ship's namespace.
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// Attach the volume read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A ConfigMap as a volume.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ConfigMapVolumeSource")]
pub struct ConfigMapVolumeSource {
    /// Name of the ConfigMap in the Ship's namespace.
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// Project only these keys (to these paths); all keys when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<k8s::KeyToPath>,
    /// Start the Ship even if the ConfigMap does not exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A Secret as a volume.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.SecretVolumeSource")]
pub struct SecretVolumeSource {
    /// Name of the Secret in the Ship's namespace.
    #[schemars(extend("x-required" = true))]
    pub secret_name: String,
    /// Project only these keys (to these paths); all keys when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<k8s::KeyToPath>,
    /// Start the Ship even if the Secret does not exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A host port forwarded into the VM.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.PortMapping")]
pub struct PortMapping {
    /// Optional name of the mapping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port in the guest (1-65535).
    #[schemars(extend("x-required" = true))]
    pub guest_port: i32,
    /// Port on the node (1-65535).
    #[schemars(extend("x-required" = true))]
    pub host_port: i32,
    /// Host address to bind; all addresses when empty.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP"]))]
    pub protocol: Option<String>,
}

/// cloud-init (NoCloud) data for the guest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.CloudInit")]
pub struct CloudInit {
    /// Inline user-data (`#cloud-config …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// A Secret in the Ship's namespace whose `userdata` key holds the user-data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<k8s::LocalObjectReference>,
    /// Inline network-config (version 1 or 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    /// A Secret in the Ship's namespace whose `networkdata` key holds the network-config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<k8s::LocalObjectReference>,
}

/// Guest OS facts reported by qemu-guest-agent.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.GuestOsInfo")]
pub struct GuestOsInfo {
    /// OS name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// OS version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kernel release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// Hostname the guest reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Observed state of a Ship.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipStatus")]
pub struct ShipStatus {
    /// Lifecycle phase: Pending, Scheduled, Starting, Running, Stopping, Stopped, Migrating, Failed (or Unknown when the node is lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Pending", "Scheduled", "Starting", "Running", "Stopping", "Stopped", "Migrating", "Failed", "Unknown"]))]
    pub phase: Option<String>,
    /// Current observations (`Scheduled`, `Ready`, `Migrating`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// CamelCase reason for the current phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail about the current phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Node the VM currently runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Address of the node the VM runs on.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// IP addresses of the guest, primary first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Network interfaces of the guest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<ShipInterfaceStatus>,
    /// Image the VM booted (resolved reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Content digest of the booted image.
    #[serde(rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// When the VM process was last started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// How many times the VM has been restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    /// The `metadata.generation` this status reflects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// State of the current or last live migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// What the guest agent reports about the guest OS (`guestOSInfo`, as KubeVirt names it).
    #[serde(rename = "guestOSInfo", skip_serializing_if = "Option::is_none")]
    pub guest_os_info: Option<GuestOsInfo>,
}

/// A guest network interface.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipInterfaceStatus")]
pub struct ShipInterfaceStatus {
    /// Interface name in the guest or on the host bridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// MAC address (stable across migrations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Addresses assigned to the interface.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// NetworkClass or ClusterNetworkClass the interface belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_class_name: Option<String>,
}

/// State of a live migration.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.MigrationStatus")]
pub struct MigrationStatus {
    /// Pending, Ready, Migrating, Completed or Failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Pending", "Ready", "Migrating", "Completed", "Failed"]))]
    pub phase: Option<String>,
    /// Node the VM migrates from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// Node the VM migrates to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// When the migration started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the migration completed or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// CamelCase reason of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A Ship template inside Deployments, ReplicaSets and Fleets.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipTemplateSpec")]
pub struct ShipTemplateSpec {
    /// Labels and annotations of the created Ships.
    pub metadata: ObjectMeta,
    /// Spec of the created Ships.
    pub spec: ShipSpec,
}

impl ShipTemplateSpec {
    /// Labels of the template.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.metadata.labels.clone().unwrap_or_default()
    }
}

impl ShipSpec {
    /// Fills defaults (`runStrategy: Always`).
    pub fn apply_defaults(&mut self) {
        if self.run_strategy.is_none() {
            self.run_strategy = Some("Always".to_string());
        }
        for p in &mut self.port_mappings {
            if p.protocol.is_none() {
                p.protocol = Some("TCP".to_string());
            }
        }
    }

    /// Validates the spec at `path` (`spec` or `spec.shipTemplate.spec`).
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.image.trim().is_empty() {
            errs.push(FieldError::required(format!("{path}.image"), ""));
        }
        require_subdomain(&self.ship_class, &format!("{path}.shipClass"), &mut errs);
        for (field, value) in [
            ("runtimeClass", &self.runtime_class),
            ("nodeName", &self.node_name),
            ("targetNodeName", &self.target_node_name),
            ("networkClassName", &self.network_class_name),
            ("clusterNetworkClassName", &self.cluster_network_class_name),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                check_subdomain(v, &format!("{path}.{field}"), &mut errs);
            }
        }
        if self.network_class_name.is_some() && self.cluster_network_class_name.is_some() {
            errs.push(FieldError::forbidden(
                format!("{path}.clusterNetworkClassName"),
                "may not be set together with `networkClassName`",
            ));
        }
        check_enum(
            self.run_strategy.as_deref(),
            &format!("{path}.runStrategy"),
            RUN_STRATEGIES,
            &mut errs,
        );
        check_non_negative(
            self.termination_grace_period_seconds,
            &format!("{path}.terminationGracePeriodSeconds"),
            &mut errs,
        );
        let mut names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let p = format!("{path}.volumes[{i}]");
            if v.name.is_empty() {
                errs.push(FieldError::required(format!("{p}.name"), ""));
            } else {
                check_label(&v.name, &format!("{p}.name"), &mut errs);
                if !names.insert(v.name.clone()) {
                    errs.push(FieldError::duplicate(format!("{p}.name"), &json!(v.name)));
                }
            }
            let sources = v.sources();
            match sources.as_slice() {
                [] => errs.push(FieldError::required(
                    p.clone(),
                    "must specify a volume type",
                )),
                [_] => {}
                [_, extra, ..] => errs.push(FieldError::forbidden(
                    format!("{p}.{extra}"),
                    "may not specify more than 1 volume type",
                )),
            }
            if let Some(c) = &v.persistent_volume_claim {
                require_subdomain(
                    &c.claim_name,
                    &format!("{p}.persistentVolumeClaim.claimName"),
                    &mut errs,
                );
            }
            if let Some(c) = &v.volume_claim_ref {
                require_subdomain(&c.name, &format!("{p}.volumeClaimRef.name"), &mut errs);
            }
            if let Some(c) = &v.config_map {
                require_subdomain(&c.name, &format!("{p}.configMap.name"), &mut errs);
            }
            if let Some(s) = &v.secret {
                require_subdomain(&s.secret_name, &format!("{p}.secret.secretName"), &mut errs);
            }
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            let p = format!("{path}.tolerations[{i}]");
            check_enum(
                t.operator.as_deref(),
                &format!("{p}.operator"),
                &["Equal", "Exists"],
                &mut errs,
            );
            check_enum(
                t.effect.as_deref().filter(|e| !e.is_empty()),
                &format!("{p}.effect"),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                &mut errs,
            );
            if t.operator.as_deref() == Some("Exists")
                && t.value.as_deref().is_some_and(|v| !v.is_empty())
            {
                errs.push(FieldError::invalid(
                    format!("{p}.operator"),
                    &json!(t.value),
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        for (i, c) in self.topology_spread_constraints.iter().enumerate() {
            let p = format!("{path}.topologySpreadConstraints[{i}]");
            if c.max_skew < 1 {
                errs.push(FieldError::invalid(
                    format!("{p}.maxSkew"),
                    &json!(c.max_skew),
                    "must be greater than zero",
                ));
            }
            if c.topology_key.is_empty() {
                errs.push(FieldError::required(format!("{p}.topologyKey"), ""));
            }
            check_enum(
                Some(c.when_unsatisfiable.as_str()),
                &format!("{p}.whenUnsatisfiable"),
                &["DoNotSchedule", "ScheduleAnyway"],
                &mut errs,
            );
        }
        let mut ports = BTreeSet::new();
        for (i, m) in self.port_mappings.iter().enumerate() {
            let p = format!("{path}.portMappings[{i}]");
            for (field, port) in [("guestPort", m.guest_port), ("hostPort", m.host_port)] {
                if !(1..=65535).contains(&port) {
                    errs.push(FieldError::invalid(
                        format!("{p}.{field}"),
                        &json!(port),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            check_enum(
                m.protocol.as_deref(),
                &format!("{p}.protocol"),
                &["TCP", "UDP", "SCTP"],
                &mut errs,
            );
            let key = (m.host_port, m.protocol.clone(), m.host_ip.clone());
            if !ports.insert(key) {
                errs.push(FieldError::duplicate(
                    format!("{p}.hostPort"),
                    &json!(m.host_port),
                ));
            }
        }
        if let Some(ci) = &self.cloud_init {
            if ci.user_data.is_some() && ci.user_data_secret_ref.is_some() {
                errs.push(FieldError::forbidden(
                    format!("{path}.cloudInit.userDataSecretRef"),
                    "may not be set together with `userData`",
                ));
            }
            if ci.network_data.is_some() && ci.network_data_secret_ref.is_some() {
                errs.push(FieldError::forbidden(
                    format!("{path}.cloudInit.networkDataSecretRef"),
                    "may not be set together with `networkData`",
                ));
            }
        }
        errs
    }
}

impl Kind for Ship {
    fn apply_defaults(&mut self) {
        self.spec.apply_defaults();
        if self.status.is_none() {
            self.status = Some(ShipStatus {
                phase: Some("Pending".to_string()),
                ..Default::default()
            });
        }
    }

    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = self.spec.validate("spec");
        if let Some(st) = &self.status {
            check_enum(st.phase.as_deref(), "status.phase", SHIP_PHASES, &mut errs);
            errs.extend(validate_conditions(&st.conditions, "status.conditions"));
            if let Some(m) = &st.migration {
                check_enum(
                    m.phase.as_deref(),
                    "status.migration.phase",
                    MIGRATION_PHASES,
                    &mut errs,
                );
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col(
                "Phase",
                "string",
                "Lifecycle phase of the virtual machine.",
                0,
            ),
            col("Node", "string", "Node the virtual machine runs on.", 0),
            col("IP", "string", "Primary IP address of the guest.", 0),
            col(
                "Class",
                "string",
                "ShipClass (machine type) of the virtual machine.",
                0,
            ),
            age_column(),
            col("Image", "string", "VM image the Ship boots.", 1),
            col(
                "RuntimeClass",
                "string",
                "RuntimeClass the Ship requires.",
                1,
            ),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        let node = st
            .node_name
            .clone()
            .or_else(|| self.spec.node_name.clone())
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(obj),
            json!(st.phase.unwrap_or_else(|| "Pending".into())),
            json!(node),
            json!(st
                .ip_addresses
                .first()
                .cloned()
                .unwrap_or_else(|| "<none>".into())),
            json!(self.spec.ship_class),
            age_cell(obj, now),
            json!(self.spec.image),
            json!(self
                .spec
                .runtime_class
                .clone()
                .unwrap_or_else(|| "<none>".into())),
        ]
    }

    fn selectable_fields() -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.shipClass",
            "spec.runtimeClass",
            "spec.targetNodeName",
            "status.phase",
        ]
    }
}

// =============================================================================================
// ShipClass
// =============================================================================================

kind_struct! {
    /// ShipClass is a VM machine type: CPU, memory and migration tuning. Cluster-scoped.
    ShipClass, "io.tugboat.core.v1.ShipClass" {
        /// The machine type.
        pub spec: ShipClassSpec,
    }
}

/// A VM machine type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipClassSpec")]
pub struct ShipClassSpec {
    /// Virtual CPUs.
    #[schemars(extend("x-required" = true))]
    pub cpu: ShipClassCpu,
    /// Guest memory.
    #[schemars(extend("x-required" = true))]
    pub memory: ShipClassMemory,
    /// QEMU machine type, e.g. `q35` (x86) or `virt` (arm64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// QEMU live-migration parameters used for Ships of this class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationParameters>,
}

/// CPU of a machine type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipClassCpu")]
pub struct ShipClassCpu {
    /// Guest CPU architecture, e.g. `x64` or `arm64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Number of virtual CPU cores at boot.
    #[schemars(extend("x-required" = true))]
    pub cores: i32,
    /// CPU sockets of the virtual topology.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<i32>,
    /// Threads per core of the virtual topology.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Most cores the VM may have after CPU hotplug; defaults to `cores`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cores: Option<i32>,
    /// QEMU CPU model (`host`, `max`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Memory of a machine type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.ShipClassMemory")]
pub struct ShipClassMemory {
    /// Memory at boot, a quantity such as `4Gi`.
    #[schemars(extend("x-required" = true))]
    pub size: Quantity,
    /// Most memory the VM may have after memory hotplug; defaults to `size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Quantity>,
}

/// QEMU migration tuning.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.MigrationParameters")]
pub struct MigrationParameters {
    /// Maximum migration bandwidth in bytes per second, a quantity such as `1Gi`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Quantity>,
    /// Maximum tolerated downtime at switch-over, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_millis: Option<i64>,
    /// Enable XBZRLE page compression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbzrle: Option<bool>,
    /// XBZRLE cache size, a quantity such as `256Mi`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache_size: Option<Quantity>,
    /// Switch to post-copy migration when pre-copy does not converge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postcopy: Option<bool>,
    /// Throttle the guest CPU to help pre-copy converge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
}

impl Kind for ShipClass {
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let cpu = &self.spec.cpu;
        if cpu.cores < 1 {
            errs.push(FieldError::invalid(
                "spec.cpu.cores",
                &json!(cpu.cores),
                "must be greater than 0",
            ));
        }
        for (f, v) in [("sockets", cpu.sockets), ("threads", cpu.threads)] {
            if let Some(v) = v.filter(|v| *v < 1) {
                errs.push(FieldError::invalid(
                    format!("spec.cpu.{f}"),
                    &json!(v),
                    "must be greater than 0",
                ));
            }
        }
        if let Some(m) = cpu.max_cores.filter(|m| *m < cpu.cores) {
            errs.push(FieldError::invalid(
                "spec.cpu.maxCores",
                &json!(m),
                "must be greater than or equal to `cores`",
            ));
        }
        let mem = &self.spec.memory;
        let size = if mem.size.0.is_empty() {
            errs.push(FieldError::required("spec.memory.size", ""));
            None
        } else {
            check_quantity(&mem.size.0, "spec.memory.size", true, &mut errs)
        };
        if let Some(max) = &mem.max_size {
            let m = check_quantity(&max.0, "spec.memory.maxSize", true, &mut errs);
            if let (Some(m), Some(s)) = (m, size) {
                if m < s {
                    errs.push(FieldError::invalid(
                        "spec.memory.maxSize",
                        &json!(max.0),
                        "must be greater than or equal to `size`",
                    ));
                }
            }
        }
        if let Some(mig) = &self.spec.migration {
            if let Some(b) = &mig.bandwidth {
                check_quantity(&b.0, "spec.migration.bandwidth", true, &mut errs);
            }
            if let Some(c) = &mig.xbzrle_cache_size {
                check_quantity(&c.0, "spec.migration.xbzrleCacheSize", true, &mut errs);
            }
            check_non_negative(
                mig.downtime_millis,
                "spec.migration.downtimeMillis",
                &mut errs,
            );
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("CPU", "integer", "Virtual CPU cores.", 0),
            col("Memory", "string", "Guest memory.", 0),
            col("Arch", "string", "Guest CPU architecture.", 0),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.spec.cpu.cores),
            json!(self.spec.memory.size.0),
            json!(self
                .spec
                .cpu
                .architecture
                .clone()
                .unwrap_or_else(|| "<none>".into())),
            age_cell(obj, now),
        ]
    }
}

// =============================================================================================
// RuntimeClass
// =============================================================================================

kind_struct! {
    /// RuntimeClass declares the capabilities of the VM runtime on nodes (live migration, hotplug). Cluster-scoped.
    RuntimeClass, "io.tugboat.core.v1.RuntimeClass" {
        /// The capabilities.
        pub spec: RuntimeClassSpec,
    }
}

/// Capabilities of a VM runtime.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.RuntimeClassSpec")]
pub struct RuntimeClassSpec {
    /// Runtime handler on the node that runs Ships of this class (default `qemu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// QEMU machine type the runtime uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The runtime can live-migrate VMs between nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_migration: Option<bool>,
    /// Devices that can be added or removed while the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotplug: Option<Hotplug>,
}

/// Hotplug capabilities per device type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.Hotplug")]
pub struct Hotplug {
    /// vCPU hotplug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<HotplugSupport>,
    /// Memory hotplug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<HotplugSupport>,
    /// Network interface hotplug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nic: Option<HotplugSupport>,
    /// Disk hotplug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<HotplugSupport>,
}

/// Whether a device type can be added and removed at runtime.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.HotplugSupport")]
pub struct HotplugSupport {
    /// Devices can be added while the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add: Option<bool>,
    /// Devices can be removed while the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove: Option<bool>,
}

impl Kind for RuntimeClass {
    fn apply_defaults(&mut self) {
        if self.spec.live_migration.is_none() {
            self.spec.live_migration = Some(false);
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col(
                "Live-Migration",
                "boolean",
                "The runtime can live-migrate VMs.",
                0,
            ),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.spec.live_migration.unwrap_or(false)),
            age_cell(obj, now),
        ]
    }
}

// =============================================================================================
// NetworkClass / ClusterNetworkClass
// =============================================================================================

kind_struct! {
    /// NetworkClass configures a CNI network for Ships of its namespace.
    NetworkClass, "io.tugboat.core.v1.NetworkClass" {
        /// The network.
        pub spec: NetworkClassSpec,
        /// Which nodes can attach Ships to the network.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<NetworkClassStatus>,
    }
}

kind_struct! {
    /// ClusterNetworkClass configures a CNI network usable by Ships of every namespace.
    ClusterNetworkClass, "io.tugboat.core.v1.ClusterNetworkClass" {
        /// The network.
        pub spec: NetworkClassSpec,
        /// Which nodes can attach Ships to the network.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<NetworkClassStatus>,
    }
}

/// A CNI network.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.NetworkClassSpec")]
pub struct NetworkClassSpec {
    /// Main CNI plugin of the network, e.g. `bridge` or `flannel`.
    #[schemars(extend("x-required" = true))]
    pub cni_plugin: String,
    /// CNI spec version (default `1.0.0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    /// Plugin configuration: a JSON object, or a string holding JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "FreeForm")]
    pub config: Option<Value>,
}

/// Any JSON value (schema `x-kubernetes-preserve-unknown-fields`).
pub struct FreeForm;

impl JsonSchema for FreeForm {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FreeForm".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
    }
}

/// Readiness of a network.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.NetworkClassStatus")]
pub struct NetworkClassStatus {
    /// Nodes whose agent reports every plugin the network needs as ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ready_nodes: Vec<String>,
    /// Current observations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status reflects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn validate_network_spec(spec: &NetworkClassSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.cni_plugin.is_empty() {
        errs.push(FieldError::required("spec.cniPlugin", ""));
    }
    match &spec.config {
        None | Some(Value::Object(_)) => {}
        Some(Value::String(s)) => {
            if serde_json::from_str::<Value>(s).is_err() {
                errs.push(FieldError::invalid(
                    "spec.config",
                    &json!(s),
                    "must be a JSON object or a string holding JSON",
                ));
            }
        }
        Some(other) => errs.push(FieldError::invalid(
            "spec.config",
            other,
            "must be a JSON object or a string holding JSON",
        )),
    }
    errs
}

fn network_columns() -> Vec<Column> {
    vec![
        name_column(),
        col("Plugin", "string", "Main CNI plugin.", 0),
        col(
            "Ready-Nodes",
            "integer",
            "Nodes that can attach Ships to the network.",
            0,
        ),
        age_column(),
    ]
}

fn network_cells(
    spec: &NetworkClassSpec,
    status: &Option<NetworkClassStatus>,
    obj: &Value,
    now: jiff::Timestamp,
) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(spec.cni_plugin),
        json!(status.as_ref().map_or(0, |s| s.ready_nodes.len())),
        age_cell(obj, now),
    ]
}

/// NetworkClass and ClusterNetworkClass differ only in scope.
macro_rules! network_kind {
    ($($kind:ty),*) => {$(
        impl Kind for $kind {
            fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
                validate_network_spec(&self.spec)
            }
            fn columns() -> Vec<Column> {
                network_columns()
            }
            fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
                network_cells(&self.spec, &self.status, obj, now)
            }
            fn selectable_fields() -> &'static [&'static str] {
                &["spec.cniPlugin"]
            }
        }
    )*};
}

network_kind!(NetworkClass, ClusterNetworkClass);

// =============================================================================================
// Namespace
// =============================================================================================

kind_struct! {
    /// Namespace provides a scope for names of namespaced objects.
    Namespace, "io.tugboat.core.v1.Namespace" {
        /// Finalizers of the namespace.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub spec: Option<k8s::NamespaceSpec>,
        /// Phase (`Active` or `Terminating`) and conditions.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<k8s::NamespaceStatus>,
    }
}

impl Kind for Namespace {
    fn apply_defaults(&mut self) {
        let status = self.status.get_or_insert_with(Default::default);
        if status.phase.is_none() {
            status.phase = Some("Active".to_string());
        }
    }

    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(st) = &self.status {
            check_enum(
                st.phase.as_deref(),
                "status.phase",
                &["Active", "Terminating"],
                &mut errs,
            );
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Status", "string", "The phase of the namespace.", 0),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Active".into());
        vec![name_cell(obj), json!(phase), age_cell(obj, now)]
    }

    fn selectable_fields() -> &'static [&'static str] {
        &["status.phase"]
    }
}

// =============================================================================================
// Node
// =============================================================================================

kind_struct! {
    /// Node is a machine that runs Ships (a tugboat-agent registers it).
    Node, "io.tugboat.core.v1.Node" {
        /// Scheduling settings: taints, unschedulable, pod CIDR.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub spec: Option<k8s::NodeSpec>,
        /// Capacity, addresses, conditions and runtime details reported by the agent.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<NodeStatus>,
    }
}

/// Observed state of a Node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.NodeStatus")]
pub struct NodeStatus {
    /// Total resources of the node (`cpu`, `memory`, `ships`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    /// Resources available to Ships (`cpu`, `memory`, `ships`); defaults to capacity.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, Quantity>,
    /// Current observations (`Ready`, `MemoryPressure`, `DiskPressure`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s::NodeCondition>,
    /// Addresses of the node (`InternalIP`, `ExternalIP`, `Hostname`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<k8s::NodeAddress>,
    /// Endpoints of daemons on the node (the agent's port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_endpoints: Option<k8s::NodeDaemonEndpoints>,
    /// Identification of the node: kernel, OS image, agent version (`kubeletVersion`), runtime version, architecture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_info: Option<k8s::NodeSystemInfo>,
    /// VM images cached on the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<k8s::ContainerImage>,
    /// Readiness of the CNI plugins the agent probed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cni_plugins: Vec<CniPluginStatus>,
    /// RuntimeClasses whose capabilities the node's runtime satisfies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runtime_classes: Vec<String>,
    /// Number of Ships currently placed on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ship_count: Option<i32>,
    /// Volumes in use (mounted) on the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes_in_use: Vec<String>,
    /// Volumes attached to the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes_attached: Vec<k8s::AttachedVolume>,
    /// Deprecated node phase, kept for compatibility.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// Readiness of one CNI plugin on a node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.core.v1.CniPluginStatus")]
pub struct CniPluginStatus {
    /// Plugin name (`bridge`, `flannel`, `portmap`, …).
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// The plugin binary and its runtime state were found.
    #[schemars(extend("x-required" = true))]
    pub ready: bool,
    /// Why the plugin is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Node {
    /// `Ready`, `NotReady` or `Unknown`, plus `,SchedulingDisabled` when cordoned.
    pub fn status_text(&self) -> String {
        let ready = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let mut text = match ready.map(|c| c.status.as_str()) {
            Some("True") => "Ready".to_string(),
            Some("False") => "NotReady".to_string(),
            _ => "Unknown".to_string(),
        };
        if self.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            text.push_str(",SchedulingDisabled");
        }
        text
    }

    /// Roles from `node-role.kubernetes.io/<role>`, `kubernetes.io/role` and `tugboat.io/role`.
    pub fn roles(&self) -> String {
        let mut roles = BTreeSet::new();
        for (k, v) in self.metadata.labels.iter().flatten() {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                if !r.is_empty() {
                    roles.insert(r.to_string());
                }
            } else if (k == "kubernetes.io/role" || k == "tugboat.io/role") && !v.is_empty() {
                roles.extend(v.split(',').map(str::to_string));
            }
        }
        if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.into_iter().collect::<Vec<_>>().join(",")
        }
    }
}

impl Kind for Node {
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(spec) = &self.spec {
            for (i, t) in spec.taints.iter().flatten().enumerate() {
                if t.key.is_empty() {
                    errs.push(FieldError::required(format!("spec.taints[{i}].key"), ""));
                }
                check_enum(
                    Some(t.effect.as_str()),
                    &format!("spec.taints[{i}].effect"),
                    &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                    &mut errs,
                );
            }
        }
        if let Some(st) = &self.status {
            for (field, map) in [("capacity", &st.capacity), ("allocatable", &st.allocatable)] {
                for (k, q) in map {
                    check_quantity(&q.0, &format!("status.{field}[{k}]"), false, &mut errs);
                }
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Status", "string", "The status of the node.", 0),
            col("Roles", "string", "The roles of the node.", 0),
            col("Ships", "string", "Ships placed on the node.", 0),
            col("CPU", "string", "Allocatable CPU.", 0),
            col("Memory", "string", "Allocatable memory.", 0),
            age_column(),
            col("Internal-IP", "string", "Internal IP of the node.", 1),
            col(
                "Version",
                "string",
                "Agent version reported by the node.",
                1,
            ),
            col("OS-Image", "string", "OS image reported by the node.", 1),
            col(
                "Kernel-Version",
                "string",
                "Kernel version reported by the node.",
                1,
            ),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        let res = |name: &str| {
            st.allocatable
                .get(name)
                .or_else(|| st.capacity.get(name))
                .map_or_else(|| "<unknown>".to_string(), |q| q.0.clone())
        };
        let ip = st
            .addresses
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .map_or_else(|| "<none>".to_string(), |a| a.address.clone());
        let info = st.node_info.clone().unwrap_or_default();
        let or_unknown = |s: String| {
            if s.is_empty() {
                "<unknown>".to_string()
            } else {
                s
            }
        };
        vec![
            name_cell(obj),
            json!(self.status_text()),
            json!(self.roles()),
            json!(st
                .ship_count
                .map_or_else(|| "<unknown>".to_string(), |c| c.to_string())),
            json!(res("cpu")),
            json!(res("memory")),
            age_cell(obj, now),
            json!(ip),
            json!(or_unknown(info.kubelet_version)),
            json!(or_unknown(info.os_image)),
            json!(or_unknown(info.kernel_version)),
        ]
    }

    fn field(obj: &Value, path: &str) -> Option<String> {
        (path == "spec.unschedulable").then(|| {
            let v = super::common::field_value(obj, path);
            if v.is_empty() {
                "false".to_string()
            } else {
                v
            }
        })
    }
}

// =============================================================================================
// ConfigMap / Secret / ServiceAccount
// =============================================================================================

kind_struct! {
    /// ConfigMap holds configuration data for Ships to consume.
    ConfigMap, "io.tugboat.core.v1.ConfigMap" {
        /// UTF-8 configuration data. Keys must consist of alphanumeric characters, '-', '_' or '.'.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub data: Option<BTreeMap<String, String>>,
        /// Binary configuration data, base64-encoded. Keys may not overlap with `data`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub binary_data: Option<BTreeMap<String, String>>,
        /// If true, the data cannot be changed (only the object deleted).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub immutable: Option<bool>,
    }
}

const MAX_CONFIG_BYTES: usize = 1024 * 1024;

fn check_immutable<T: PartialEq>(
    old_immutable: Option<bool>,
    new_immutable: Option<bool>,
    old_data: &T,
    new_data: &T,
    data_field: &str,
    errs: &mut Vec<FieldError>,
) {
    if old_immutable == Some(true) {
        if new_immutable != Some(true) {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        if old_data != new_data {
            errs.push(FieldError::forbidden(
                data_field,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

impl Kind for ConfigMap {
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut size = 0;
        for (k, v) in self.data.iter().flatten() {
            check_config_key(k, &format!("data[{k}]"), &mut errs);
            size += k.len() + v.len();
        }
        let engine = base64::engine::general_purpose::STANDARD;
        for (k, v) in self.binary_data.iter().flatten() {
            check_config_key(k, &format!("binaryData[{k}]"), &mut errs);
            if self.data.as_ref().is_some_and(|d| d.contains_key(k)) {
                errs.push(FieldError::invalid(
                    format!("binaryData[{k}]"),
                    &json!(k),
                    "duplicate of key present in data",
                ));
            }
            if engine.decode(v).is_err() {
                errs.push(FieldError::invalid(
                    format!("binaryData[{k}]"),
                    &json!("<binary data>"),
                    "must be base64-encoded",
                ));
            }
            size += k.len() + v.len();
        }
        if size > MAX_CONFIG_BYTES {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: String::new(),
                message: format!("Too long: must have at most {MAX_CONFIG_BYTES} bytes"),
            });
        }
        if crate::registries::is_settings(
            self.metadata.namespace.as_deref(),
            self.metadata.name.as_deref(),
        ) {
            // Nodes pull with these settings; a document they cannot read is refused here.
            if let Err(e) = crate::registries::validate(self.data.as_ref()) {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: e.field,
                    message: format!("Invalid value: {}", e.message),
                });
            }
        }
        if let Some(old) = old {
            let both = (&self.data, &self.binary_data);
            let old_both = (&old.data, &old.binary_data);
            check_immutable(
                old.immutable,
                self.immutable,
                &old_both,
                &both,
                "data",
                &mut errs,
            );
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Data", "integer", "Number of keys.", 0),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, BTreeMap::len)
            + self.binary_data.as_ref().map_or(0, BTreeMap::len);
        vec![name_cell(obj), json!(n), age_cell(obj, now)]
    }
}

kind_struct! {
    /// Secret holds sensitive data: passwords, tokens, keys.
    Secret, "io.tugboat.core.v1.Secret" {
        /// Secret data, each value base64-encoded. Keys must consist of alphanumeric characters, '-', '_' or '.'.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub data: Option<BTreeMap<String, String>>,
        /// Write-only convenience: plain-text values merged into `data` (encoded) on write; never read back.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub string_data: Option<BTreeMap<String, String>>,
        /// Type of the secret: `Opaque` (default), `service-account-token`, `kubernetes.io/tls`, …
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        pub type_: Option<String>,
        /// If true, the data cannot be changed (only the object deleted).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub immutable: Option<bool>,
    }
}

impl Kind for Secret {
    fn apply_defaults(&mut self) {
        if self.type_.as_deref().is_none_or(str::is_empty) {
            self.type_ = Some("Opaque".to_string());
        }
        if let Some(plain) = self.string_data.take() {
            let engine = base64::engine::general_purpose::STANDARD;
            let data = self.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in plain {
                data.insert(k, engine.encode(v));
            }
        }
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let engine = base64::engine::general_purpose::STANDARD;
        let mut size = 0;
        for (k, v) in self.data.iter().flatten() {
            check_config_key(k, &format!("data[{k}]"), &mut errs);
            match engine.decode(v) {
                Ok(bytes) => size += k.len() + bytes.len(),
                Err(e) => errs.push(FieldError::invalid(
                    format!("data[{k}]"),
                    &json!("<secret contents redacted>"),
                    &format!("must be base64-encoded: {e}"),
                )),
            }
        }
        for k in self.string_data.iter().flatten().map(|(k, _)| k) {
            check_config_key(k, &format!("stringData[{k}]"), &mut errs);
        }
        if size > MAX_CONFIG_BYTES {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "data".to_string(),
                message: format!("Too long: must have at most {MAX_CONFIG_BYTES} bytes"),
            });
        }
        if let Some(old) = old {
            if old.type_ != self.type_ {
                errs.push(FieldError::invalid(
                    "type",
                    &json!(self.type_),
                    "field is immutable",
                ));
            }
            check_immutable(
                old.immutable,
                self.immutable,
                &old.data,
                &self.data,
                "data",
                &mut errs,
            );
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Type", "string", "The type of the secret.", 0),
            col("Data", "integer", "Number of keys.", 0),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.type_.clone().unwrap_or_else(|| "Opaque".into())),
            json!(self.data.as_ref().map_or(0, BTreeMap::len)),
            age_cell(obj, now),
        ]
    }

    fn selectable_fields() -> &'static [&'static str] {
        &["type"]
    }
}

kind_struct! {
    /// ServiceAccount is an identity for processes and controllers; its tokens are stored in Secrets.
    ServiceAccount, "io.tugboat.core.v1.ServiceAccount" {
        /// Secrets holding tokens of this ServiceAccount.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub secrets: Option<Vec<k8s::ObjectReference>>,
        /// Secrets used to pull VM images for Ships running as this ServiceAccount.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub image_pull_secrets: Option<Vec<k8s::LocalObjectReference>>,
        /// Whether Ships running as this ServiceAccount get a token projected automatically.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub automount_service_account_token: Option<bool>,
    }
}

impl Kind for ServiceAccount {
    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Secrets", "integer", "Number of token Secrets.", 0),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.secrets.as_ref().map_or(0, Vec::len)),
            age_cell(obj, now),
        ]
    }
}

// =============================================================================================
// Storage
// =============================================================================================

kind_struct! {
    /// PersistentVolume is a piece of storage provisioned by an administrator or a CSI driver.
    PersistentVolume, "io.tugboat.core.v1.PersistentVolume" {
        /// Capacity, access modes, source (usually `csi`) and binding.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub spec: Option<k8s::PersistentVolumeSpec>,
        /// Phase: Pending, Available, Bound, Released or Failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<k8s::PersistentVolumeStatus>,
    }
}

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn check_access_modes(modes: Option<&Vec<String>>, path: &str, errs: &mut Vec<FieldError>) {
    match modes {
        None => errs.push(FieldError::required(path, "")),
        Some(m) if m.is_empty() => errs.push(FieldError::required(path, "")),
        Some(m) => {
            for mode in m {
                check_enum(Some(mode), path, ACCESS_MODES, errs);
            }
        }
    }
}

impl Kind for PersistentVolume {
    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.persistent_volume_reclaim_policy.is_none() {
            spec.persistent_volume_reclaim_policy = Some("Retain".to_string());
        }
        if spec.volume_mode.is_none() {
            spec.volume_mode = Some("Filesystem".to_string());
        }
        let status = self.status.get_or_insert_with(Default::default);
        if status.phase.is_none() {
            status.phase = Some("Pending".to_string());
        }
    }

    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        check_access_modes(spec.access_modes.as_ref(), "spec.accessModes", &mut errs);
        match spec.capacity.as_ref().and_then(|c| c.get("storage")) {
            None => errs.push(FieldError::required("spec.capacity", "")),
            Some(q) => {
                check_quantity(&q.0, "spec.capacity[storage]", true, &mut errs);
            }
        }
        check_enum(
            spec.persistent_volume_reclaim_policy.as_deref(),
            "spec.persistentVolumeReclaimPolicy",
            &["Delete", "Recycle", "Retain"],
            &mut errs,
        );
        check_enum(
            spec.volume_mode.as_deref(),
            "spec.volumeMode",
            &["Block", "Filesystem"],
            &mut errs,
        );
        if let Some(st) = &self.status {
            check_enum(
                st.phase.as_deref(),
                "status.phase",
                &["Pending", "Available", "Bound", "Released", "Failed"],
                &mut errs,
            );
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Capacity", "string", "Capacity of the volume.", 0),
            col("Access Modes", "string", "Access modes of the volume.", 0),
            col(
                "Reclaim Policy",
                "string",
                "What happens to the volume when released.",
                0,
            ),
            col("Status", "string", "Phase of the volume.", 0),
            col("Claim", "string", "The claim bound to the volume.", 0),
            col("StorageClass", "string", "StorageClass of the volume.", 0),
            col(
                "VolumeAttributesClass",
                "string",
                "VolumeAttributesClass of the volume.",
                0,
            ),
            col("Reason", "string", "Reason of the phase.", 0),
            age_column(),
            col("VolumeMode", "string", "Block or Filesystem.", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let claim = spec.claim_ref.as_ref().map_or(String::new(), |c| {
            format!(
                "{}/{}",
                c.namespace.clone().unwrap_or_default(),
                c.name.clone().unwrap_or_default()
            )
        });
        vec![
            name_cell(obj),
            json!(spec
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map_or(String::new(), |q| q.0.clone())),
            json!(access_modes_short(spec.access_modes.as_deref())),
            json!(spec.persistent_volume_reclaim_policy.unwrap_or_default()),
            json!(st.phase.unwrap_or_default()),
            json!(claim),
            json!(spec.storage_class_name.unwrap_or_default()),
            json!(spec
                .volume_attributes_class_name
                .unwrap_or_else(|| "<unset>".into())),
            json!(st.reason.unwrap_or_default()),
            age_cell(obj, now),
            json!(spec.volume_mode.unwrap_or_else(|| "Filesystem".into())),
        ]
    }
}

/// `RWO,ROX` as kubectl prints access modes.
pub fn access_modes_short(modes: Option<&[String]>) -> String {
    modes
        .unwrap_or_default()
        .iter()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

kind_struct! {
    /// PersistentVolumeClaim is a request for storage by a Ship.
    PersistentVolumeClaim, "io.tugboat.core.v1.PersistentVolumeClaim" {
        /// Requested access modes, size, StorageClass and volume mode.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub spec: Option<k8s::PersistentVolumeClaimSpec>,
        /// Phase (Pending, Bound, Lost), capacity and conditions.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<k8s::PersistentVolumeClaimStatus>,
    }
}

impl Kind for PersistentVolumeClaim {
    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.volume_mode.is_none() {
            spec.volume_mode = Some("Filesystem".to_string());
        }
        let status = self.status.get_or_insert_with(Default::default);
        if status.phase.is_none() {
            status.phase = Some("Pending".to_string());
        }
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        check_access_modes(spec.access_modes.as_ref(), "spec.accessModes", &mut errs);
        match spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
        {
            None => errs.push(FieldError::required("spec.resources[storage]", "")),
            Some(q) => {
                check_quantity(&q.0, "spec.resources[storage]", true, &mut errs);
            }
        }
        check_enum(
            spec.volume_mode.as_deref(),
            "spec.volumeMode",
            &["Block", "Filesystem"],
            &mut errs,
        );
        if let Some(st) = &self.status {
            check_enum(
                st.phase.as_deref(),
                "status.phase",
                &["Pending", "Bound", "Lost"],
                &mut errs,
            );
        }
        if let Some(old) = old {
            // Only the size (expansion) and a first binding may change.
            let strip = |s: &Option<k8s::PersistentVolumeClaimSpec>, keep_name: bool| {
                let mut s = s.clone().unwrap_or_default();
                if let Some(r) = s.resources.as_mut() {
                    r.requests = None;
                }
                if !keep_name {
                    s.volume_name = None;
                }
                s.volume_attributes_class_name = None;
                s
            };
            let old_bound = old
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|n| !n.is_empty());
            if strip(&old.spec, old_bound) != strip(&self.spec, old_bound) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Status", "string", "Phase of the claim.", 0),
            col("Volume", "string", "The volume bound to the claim.", 0),
            col("Capacity", "string", "Capacity of the bound volume.", 0),
            col(
                "Access Modes",
                "string",
                "Access modes of the bound volume.",
                0,
            ),
            col("StorageClass", "string", "StorageClass of the claim.", 0),
            col(
                "VolumeAttributesClass",
                "string",
                "VolumeAttributesClass of the claim.",
                0,
            ),
            age_column(),
            col("VolumeMode", "string", "Block or Filesystem.", 1),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        vec![
            name_cell(obj),
            json!(st.phase.unwrap_or_default()),
            json!(spec.volume_name.unwrap_or_default()),
            json!(st
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map_or(String::new(), |q| q.0.clone())),
            json!(access_modes_short(st.access_modes.as_deref())),
            json!(spec.storage_class_name.unwrap_or_default()),
            json!(spec
                .volume_attributes_class_name
                .unwrap_or_else(|| "<unset>".into())),
            age_cell(obj, now),
            json!(spec.volume_mode.unwrap_or_else(|| "Filesystem".into())),
        ]
    }
}

kind_struct! {
    /// StorageClass describes a class of dynamically provisioned storage (a CSI driver and its parameters). Cluster-scoped.
    StorageClass, "io.tugboat.core.v1.StorageClass" {
        /// Name of the CSI driver that provisions volumes of this class.
        #[schemars(extend("x-required" = true))]
        pub provisioner: String,
        /// Driver-specific parameters for provisioning.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub parameters: Option<BTreeMap<String, String>>,
        /// What happens to provisioned volumes when released: `Delete` (default) or `Retain`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub reclaim_policy: Option<String>,
        /// Mount options for provisioned volumes.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub mount_options: Option<Vec<String>>,
        /// Whether claims of this class may be expanded.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub allow_volume_expansion: Option<bool>,
        /// When volumes are provisioned and bound: `Immediate` (default) or `WaitForFirstConsumer`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub volume_binding_mode: Option<String>,
        /// Topologies where volumes may be provisioned.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub allowed_topologies: Option<Vec<k8s::TopologySelectorTerm>>,
    }
}

impl Kind for StorageClass {
    fn apply_defaults(&mut self) {
        if self.reclaim_policy.is_none() {
            self.reclaim_policy = Some("Delete".to_string());
        }
        if self.volume_binding_mode.is_none() {
            self.volume_binding_mode = Some("Immediate".to_string());
        }
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.provisioner.is_empty() {
            errs.push(FieldError::required("provisioner", ""));
        }
        check_enum(
            self.reclaim_policy.as_deref(),
            "reclaimPolicy",
            &["Delete", "Retain"],
            &mut errs,
        );
        check_enum(
            self.volume_binding_mode.as_deref(),
            "volumeBindingMode",
            &["Immediate", "WaitForFirstConsumer"],
            &mut errs,
        );
        if let Some(old) = old {
            if old.provisioner != self.provisioner {
                errs.push(FieldError::forbidden(
                    "provisioner",
                    "updates to provisioner are forbidden.",
                ));
            }
            if old.parameters != self.parameters {
                errs.push(FieldError::forbidden(
                    "parameters",
                    "updates to parameters are forbidden.",
                ));
            }
            if old.reclaim_policy != self.reclaim_policy {
                errs.push(FieldError::forbidden(
                    "reclaimPolicy",
                    "updates to reclaimPolicy are forbidden.",
                ));
            }
            if old.volume_binding_mode != self.volume_binding_mode {
                errs.push(FieldError::forbidden(
                    "volumeBindingMode",
                    "field is immutable",
                ));
            }
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Provisioner", "string", "CSI driver of the class.", 0),
            col(
                "ReclaimPolicy",
                "string",
                "What happens to released volumes.",
                0,
            ),
            col("VolumeBindingMode", "string", "When volumes are bound.", 0),
            col(
                "AllowVolumeExpansion",
                "string",
                "Whether claims may grow.",
                0,
            ),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let mut name = get_name(obj);
        if self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
            .is_some_and(|v| v == "true")
        {
            name.push_str(" (default)");
        }
        vec![
            json!(name),
            json!(self.provisioner),
            json!(self
                .reclaim_policy
                .clone()
                .unwrap_or_else(|| "Delete".into())),
            json!(self
                .volume_binding_mode
                .clone()
                .unwrap_or_else(|| "Immediate".into())),
            json!(self.allow_volume_expansion.unwrap_or(false)),
            age_cell(obj, now),
        ]
    }
}

fn get_name(obj: &Value) -> String {
    super::common::get_str(obj, &["metadata", "name"])
        .unwrap_or_default()
        .to_string()
}

// =============================================================================================
// Event
// =============================================================================================

kind_struct! {
    /// Event is a report of something that happened to an object (scheduling, start, migration, failures).
    Event, "io.tugboat.core.v1.Event" {
        /// The object this event is about.
        #[schemars(extend("x-required" = true))]
        pub involved_object: k8s::ObjectReference,
        /// Short, machine-understandable CamelCase reason for the transition.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// Human-readable description.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub message: Option<String>,
        /// Component reporting the event.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub source: Option<k8s::EventSource>,
        /// First time the event was recorded.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub first_timestamp: Option<Time>,
        /// Most recent time the event was recorded.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub last_timestamp: Option<Time>,
        /// Number of times the event occurred.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub count: Option<i32>,
        /// `Normal` or `Warning`.
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        #[schemars(extend("enum" = ["Normal", "Warning"]))]
        pub type_: Option<String>,
        /// Time the event was first observed (microsecond precision).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub event_time: Option<MicroTime>,
        /// Data about an event series this event represents.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub series: Option<k8s::EventSeries>,
        /// What action was taken or failed regarding the involved object.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub action: Option<String>,
        /// A secondary object for more complex actions.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub related: Option<k8s::ObjectReference>,
        /// Controller that emitted the event, e.g. `tugboat.io/scheduler`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub reporting_component: Option<String>,
        /// Instance of the controller that emitted the event.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub reporting_instance: Option<String>,
    }
}

impl Kind for Event {
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_enum(
            self.type_.as_deref().filter(|t| !t.is_empty()),
            "type",
            &["Normal", "Warning"],
            &mut errs,
        );
        check_non_negative(self.count.map(i64::from), "count", &mut errs);
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            col(
                "Last Seen",
                "string",
                "Most recent time the event was recorded.",
                0,
            ),
            col("Type", "string", "Type of the event (Normal, Warning).", 0),
            col("Reason", "string", "Reason for the transition.", 0),
            col("Object", "string", "The object this event is about.", 0),
            col("Subobject", "string", "Field path within the object.", 1),
            col("Source", "string", "Component reporting the event.", 1),
            col("Message", "string", "Human-readable description.", 0),
            col(
                "First Seen",
                "string",
                "First time the event was recorded.",
                1,
            ),
            col("Count", "string", "Number of times the event occurred.", 1),
            Column {
                priority: 1,
                ..name_column()
            },
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let micro = |t: &MicroTime| human_age_of(&Time(t.0), now);
        let first = match (&self.first_timestamp, &self.event_time) {
            (Some(t), _) => human_age_of(t, now),
            (None, Some(t)) => micro(t),
            (None, None) => "<unknown>".to_string(),
        };
        let mut last = self
            .last_timestamp
            .as_ref()
            .map_or_else(|| first.clone(), |t| human_age_of(t, now));
        let mut count = self.count.unwrap_or(0);
        if let Some(series) = &self.series {
            if let Some(t) = &series.last_observed_time {
                last = micro(t);
            }
            count = series.count.unwrap_or(count);
        } else if count == 0 {
            count = 1;
        }
        let io = &self.involved_object;
        let kind = io.kind.clone().unwrap_or_default().to_lowercase();
        let target = match io.name.as_deref() {
            Some(n) if !n.is_empty() => format!("{kind}/{n}"),
            _ => kind,
        };
        let source = match &self.source {
            Some(s) if s.component.as_deref().is_some_and(|c| !c.is_empty()) => {
                match s.host.as_deref().filter(|h| !h.is_empty()) {
                    Some(h) => format!("{}, {h}", s.component.clone().unwrap_or_default()),
                    None => s.component.clone().unwrap_or_default(),
                }
            }
            _ => {
                let c = self.reporting_component.clone().unwrap_or_default();
                match self.reporting_instance.as_deref().filter(|i| !i.is_empty()) {
                    Some(i) if !c.is_empty() => format!("{c}, {i}"),
                    _ => c,
                }
            }
        };
        vec![
            json!(last),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.reason.clone().unwrap_or_default()),
            json!(target),
            json!(io.field_path.clone().unwrap_or_default()),
            json!(source),
            json!(self.message.clone().unwrap_or_default().trim()),
            json!(first),
            json!(count.to_string()),
            name_cell(obj),
        ]
    }

    fn selectable_fields() -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "type",
        ]
    }

    fn field(obj: &Value, path: &str) -> Option<String> {
        if path == "source" {
            return Some(super::common::field_value(obj, "source.component"));
        }
        Self::selectable_fields()
            .contains(&path)
            .then(|| super::common::field_value(obj, path))
    }
}
