//! The `apps/v1` group: Deployment, ReplicaSet and Fleet.

use super::common::{
    age_cell, age_column, check_enum, check_label, check_non_negative, col, name_cell, name_column,
    validate_conditions, Condition, Selector,
};
use super::core::{kind_struct, ShipTemplateSpec};
use super::typed::Kind;
use crate::error::FieldError;
use crate::registry::Column;
use k8s_openapi::api::apps::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Label the Deployment controller adds to a ReplicaSet's name, selector and Ship template: a
/// hash of the Deployment's Ship template.
pub const SHIP_TEMPLATE_HASH_LABEL: &str = "ship-template-hash";

/// Annotation of the `spec.template` mirror holding the JSON of the Ship template it mirrors.
pub const SHIP_TEMPLATE_ANNOTATION: &str = "tugboat.io/ship-template";

// =============================================================================================
// Shared checks
// =============================================================================================

fn check_replicas(replicas: Option<i32>, path: &str, errs: &mut Vec<FieldError>) {
    check_non_negative(replicas.map(i64::from), path, errs);
}

/// Selector non-empty, valid, matching the template labels; template spec valid.
fn check_selector_and_template(
    selector: &Selector,
    template: &ShipTemplateSpec,
    errs: &mut Vec<FieldError>,
) {
    if selector.is_empty() {
        errs.push(FieldError::required("spec.selector", ""));
    } else {
        errs.extend(selector.validate("spec.selector"));
        let labels = template.labels();
        if !selector.matches(&labels) {
            errs.push(FieldError::invalid(
                "spec.shipTemplate.metadata.labels",
                &json!(labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
    errs.extend(template.spec.validate("spec.shipTemplate.spec"));
}

fn check_selector_immutable(old: &Selector, new: &Selector, errs: &mut Vec<FieldError>) {
    if old != new {
        errs.push(FieldError::invalid(
            "spec.selector",
            &serde_json::to_value(new).unwrap_or(Value::Null),
            "field is immutable",
        ));
    }
}

fn first_image(t: &ShipTemplateSpec) -> Value {
    json!(t.spec.image)
}

// =============================================================================================
// The `spec.template` mirror
// =============================================================================================

/// `spec.template` of Deployments and ReplicaSets: the Ship template in the shape of a
/// Kubernetes PodTemplateSpec, so that clients decoding these objects into the Kubernetes types
/// (`kubectl rollout undo`, `kubectl rollout history`) see and write back the template.
///
/// Derived by the server from `shipTemplate` on every write. An update that changes only the
/// mirror (what `kubectl rollout undo` sends) restores `shipTemplate` from the mirror's
/// `tugboat.io/ship-template` annotation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.ShipTemplateMirror")]
pub struct ShipTemplateMirror {
    /// The Ship template's labels (without `ship-template-hash`) and annotations, plus `tugboat.io/ship-template`: the Ship template as JSON.
    pub metadata: ObjectMeta,
    /// Always `containers: []`: Ships run VMs, not containers.
    pub spec: ShipTemplateMirrorSpec,
}

/// The PodSpec-shaped part of [`ShipTemplateMirror`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.ShipTemplateMirrorSpec")]
pub struct ShipTemplateMirrorSpec {
    /// Always empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<Value>>,
}

/// `t` without the `ship-template-hash` label: a ReplicaSet's template compares equal to its
/// Deployment's.
fn without_hash_label(t: &ShipTemplateSpec) -> ShipTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = &mut t.metadata.labels {
        labels.remove(SHIP_TEMPLATE_HASH_LABEL);
        if labels.is_empty() {
            t.metadata.labels = None;
        }
    }
    t
}

impl ShipTemplateMirror {
    /// The mirror of `t`.
    pub fn of(t: &ShipTemplateSpec) -> Self {
        let t = without_hash_label(t);
        let mut annotations = t.metadata.annotations.clone().unwrap_or_default();
        // Serializing a struct of structs and BTreeMaps: the text is stable for equal templates,
        // so the mirrors of a Deployment and of its ReplicaSet compare equal.
        if let Ok(text) = serde_json::to_string(&t) {
            annotations.insert(SHIP_TEMPLATE_ANNOTATION.to_string(), text);
        }
        ShipTemplateMirror {
            metadata: ObjectMeta {
                labels: t.metadata.labels.clone(),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: ShipTemplateMirrorSpec {
                containers: Some(Vec::new()),
            },
        }
    }

    /// The Ship template recorded in the mirror (`None` if absent or not a Ship template).
    pub fn ship_template(&self) -> Option<ShipTemplateSpec> {
        let text = self
            .metadata
            .annotations
            .as_ref()?
            .get(SHIP_TEMPLATE_ANNOTATION)?;
        let mut t: ShipTemplateSpec = serde_json::from_str(text).ok()?;
        t.spec.apply_defaults();
        Some(t)
    }
}

// =============================================================================================
// Deployment
// =============================================================================================

kind_struct! {
    /// Deployment manages a replicated set of identical Ships with rolling updates (through ReplicaSets).
    Deployment, "io.tugboat.apps.v1.Deployment" {
        /// Desired state of the Deployment.
        pub spec: DeploymentSpec,
        /// Most recently observed state of the Deployment.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<DeploymentStatus>,
    }
}

/// Desired state of a Deployment.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.DeploymentSpec")]
pub struct DeploymentSpec {
    /// Number of desired Ships. Defaults to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Labels of the Ships this Deployment manages: a plain map (`app: web`) or a LabelSelector. Must match the template labels; immutable.
    #[schemars(extend("x-required" = true))]
    pub selector: Selector,
    /// Ships created by this Deployment.
    #[schemars(extend("x-required" = true))]
    pub ship_template: ShipTemplateSpec,
    /// Read-only mirror of `shipTemplate` shaped like a Kubernetes PodTemplateSpec (for `kubectl rollout undo` and `history`); set by the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<ShipTemplateMirror>,
    /// How old Ships are replaced by new ones: `RollingUpdate` (default) or `Recreate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<k8s::DeploymentStrategy>,
    /// Seconds a new Ship must be ready without failing before it counts as available. Defaults to 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    /// Number of old ReplicaSets kept for rollback. Defaults to 10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Pause the rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Seconds a rollout may make no progress before it is reported failed. Defaults to 600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
}

/// Observed state of a Deployment.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.DeploymentStatus")]
pub struct DeploymentStatus {
    /// The generation observed by the Deployment controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Total Ships targeted by this Deployment (their labels match the selector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ships that have the desired template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// Ships with a Ready condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Ships ready for at least minReadySeconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// Ships still needed for 100% availability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_replicas: Option<i32>,
    /// Latest observations (`Available`, `Progressing`, `ReplicaFailure`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s::DeploymentCondition>,
    /// Hash collisions of the template, used to name new ReplicaSets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
}

fn check_int_or_percent(v: &IntOrString, path: &str, errs: &mut Vec<FieldError>) -> Option<f64> {
    match v {
        IntOrString::Int(i) if *i < 0 => {
            errs.push(FieldError::invalid(
                path,
                &json!(i),
                "must be greater than or equal to 0",
            ));
            None
        }
        IntOrString::Int(i) => Some(f64::from(*i)),
        IntOrString::String(s) => {
            let pct = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<f64>().ok());
            if pct.is_none() {
                errs.push(FieldError::invalid(
                    path,
                    &json!(s),
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
            }
            pct
        }
    }
}

impl Kind for Deployment {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec.strategy.get_or_insert_with(Default::default);
        let type_ = strategy
            .type_
            .get_or_insert_with(|| "RollingUpdate".to_string());
        if type_ == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(Default::default);
            ru.max_surge
                .get_or_insert_with(|| IntOrString::String("25%".into()));
            ru.max_unavailable
                .get_or_insert_with(|| IntOrString::String("25%".into()));
        }
        spec.ship_template.spec.apply_defaults();
        spec.template = Some(ShipTemplateMirror::of(&spec.ship_template));
    }

    fn resolve_update(&mut self, old: &Self) {
        // `kubectl rollout undo` replaces `spec.template` with an old ReplicaSet's mirror and
        // leaves `shipTemplate` alone; a client changing `shipTemplate` itself wins.
        let mut ship_template = self.spec.ship_template.clone();
        ship_template.spec.apply_defaults();
        if ship_template != old.spec.ship_template {
            return;
        }
        let Some(restored) = self
            .spec
            .template
            .as_ref()
            .and_then(ShipTemplateMirror::ship_template)
        else {
            return;
        };
        if restored != without_hash_label(&old.spec.ship_template) {
            self.spec.ship_template = restored;
        }
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = &self.spec;
        check_replicas(spec.replicas, "spec.replicas", &mut errs);
        check_selector_and_template(&spec.selector, &spec.ship_template, &mut errs);
        check_non_negative(
            spec.min_ready_seconds.map(i64::from),
            "spec.minReadySeconds",
            &mut errs,
        );
        check_non_negative(
            spec.revision_history_limit.map(i64::from),
            "spec.revisionHistoryLimit",
            &mut errs,
        );
        if let Some(p) = spec.progress_deadline_seconds {
            if p <= spec.min_ready_seconds.unwrap_or(0) {
                errs.push(FieldError::invalid(
                    "spec.progressDeadlineSeconds",
                    &json!(p),
                    "must be greater than minReadySeconds",
                ));
            }
        }
        if let Some(st) = &spec.strategy {
            check_enum(
                st.type_.as_deref(),
                "spec.strategy.type",
                &["Recreate", "RollingUpdate"],
                &mut errs,
            );
            match (st.type_.as_deref(), &st.rolling_update) {
                (Some("Recreate"), Some(_)) => errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                )),
                (_, Some(ru)) => {
                    let p = "spec.strategy.rollingUpdate";
                    let surge = ru
                        .max_surge
                        .as_ref()
                        .and_then(|v| check_int_or_percent(v, &format!("{p}.maxSurge"), &mut errs));
                    let unavail = ru.max_unavailable.as_ref().and_then(|v| {
                        check_int_or_percent(v, &format!("{p}.maxUnavailable"), &mut errs)
                    });
                    if let Some(IntOrString::String(s)) = &ru.max_unavailable {
                        if unavail.is_some_and(|u| u > 100.0) {
                            errs.push(FieldError::invalid(
                                format!("{p}.maxUnavailable"),
                                &json!(s),
                                "must not be greater than 100%",
                            ));
                        }
                    }
                    if surge == Some(0.0) && unavail == Some(0.0) {
                        errs.push(FieldError::invalid(
                            format!("{p}.maxUnavailable"),
                            &serde_json::to_value(&ru.max_unavailable).unwrap_or(Value::Null),
                            "may not be 0 when `maxSurge` is 0",
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(st) = &self.status {
            for (i, c) in st.conditions.iter().enumerate() {
                check_enum(
                    Some(c.status.as_str()),
                    &format!("status.conditions[{i}].status"),
                    &["False", "True", "Unknown"],
                    &mut errs,
                );
            }
        }
        if let Some(old) = old {
            check_selector_immutable(&old.spec.selector, &spec.selector, &mut errs);
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col(
                "Ready",
                "string",
                "Number of the Ships that are ready out of the desired.",
                0,
            ),
            col(
                "Up-to-date",
                "integer",
                "Total number of Ships that have the desired template.",
                0,
            ),
            col(
                "Available",
                "integer",
                "Total number of available Ships.",
                0,
            ),
            age_column(),
            col("Image", "string", "VM image of the Ship template.", 1),
            col(
                "Selector",
                "string",
                "Label selector of the managed Ships.",
                1,
            ),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        vec![
            name_cell(obj),
            json!(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                self.spec.replicas.unwrap_or(1)
            )),
            json!(st.updated_replicas.unwrap_or(0)),
            json!(st.available_replicas.unwrap_or(0)),
            age_cell(obj, now),
            first_image(&self.spec.ship_template),
            json!(self.spec.selector.to_query()),
        ]
    }
}

// =============================================================================================
// ReplicaSet
// =============================================================================================

kind_struct! {
    /// ReplicaSet keeps a stable number of identical Ships running.
    ReplicaSet, "io.tugboat.apps.v1.ReplicaSet" {
        /// Desired state of the ReplicaSet.
        pub spec: ReplicaSetSpec,
        /// Most recently observed state of the ReplicaSet.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<ReplicaSetStatus>,
    }
}

/// Desired state of a ReplicaSet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.ReplicaSetSpec")]
pub struct ReplicaSetSpec {
    /// Number of desired Ships. Defaults to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Seconds a new Ship must be ready before it counts as available. Defaults to 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    /// Labels of the Ships this ReplicaSet manages: a plain map (`app: web`) or a LabelSelector. Must match the template labels; immutable.
    #[schemars(extend("x-required" = true))]
    pub selector: Selector,
    /// Ships created by this ReplicaSet.
    #[schemars(extend("x-required" = true))]
    pub ship_template: ShipTemplateSpec,
    /// Read-only mirror of `shipTemplate` shaped like a Kubernetes PodTemplateSpec (for `kubectl rollout undo` and `history`); set by the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<ShipTemplateMirror>,
}

/// Observed state of a ReplicaSet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.ReplicaSetStatus")]
pub struct ReplicaSetStatus {
    /// Most recently observed number of Ships.
    pub replicas: i32,
    /// Ships whose labels match the template labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fully_labeled_replicas: Option<i32>,
    /// Ships with a Ready condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Ships ready for at least minReadySeconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The generation observed by the ReplicaSet controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Latest observations (`ReplicaFailure`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s::ReplicaSetCondition>,
}

impl Kind for ReplicaSet {
    fn apply_defaults(&mut self) {
        self.spec.replicas.get_or_insert(1);
        self.spec.ship_template.spec.apply_defaults();
        self.spec.template = Some(ShipTemplateMirror::of(&self.spec.ship_template));
    }

    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_replicas(self.spec.replicas, "spec.replicas", &mut errs);
        check_non_negative(
            self.spec.min_ready_seconds.map(i64::from),
            "spec.minReadySeconds",
            &mut errs,
        );
        check_selector_and_template(&self.spec.selector, &self.spec.ship_template, &mut errs);
        if let Some(st) = &self.status {
            check_replicas(Some(st.replicas), "status.replicas", &mut errs);
        }
        if let Some(old) = old {
            check_selector_immutable(&old.spec.selector, &self.spec.selector, &mut errs);
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Desired", "integer", "Number of desired Ships.", 0),
            col("Current", "integer", "Number of actual Ships.", 0),
            col("Ready", "integer", "Number of ready Ships.", 0),
            age_column(),
            col("Image", "string", "VM image of the Ship template.", 1),
            col(
                "Selector",
                "string",
                "Label selector of the managed Ships.",
                1,
            ),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        vec![
            name_cell(obj),
            json!(self.spec.replicas.unwrap_or(1)),
            json!(st.replicas),
            json!(st.ready_replicas.unwrap_or(0)),
            age_cell(obj, now),
            first_image(&self.spec.ship_template),
            json!(self.spec.selector.to_query()),
        ]
    }
}

// =============================================================================================
// Fleet
// =============================================================================================

kind_struct! {
    /// Fleet groups several kinds of Ships (components) that share a private network.
    Fleet, "io.tugboat.apps.v1.Fleet" {
        /// Desired components and their network.
        pub spec: FleetSpec,
        /// Readiness of the components.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub status: Option<FleetStatus>,
    }
}

/// Desired state of a Fleet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.FleetSpec")]
pub struct FleetSpec {
    /// NetworkClass (in the Fleet's namespace) of the private network shared by every component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_class_name: Option<String>,
    /// The groups of identical Ships making up the Fleet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<FleetComponent>,
}

/// One group of identical Ships in a Fleet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.FleetComponent")]
pub struct FleetComponent {
    /// Name of the component, a DNS label unique within the Fleet.
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// Number of Ships of this component. Defaults to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ships created for this component.
    #[schemars(extend("x-required" = true))]
    pub ship_template: ShipTemplateSpec,
}

/// Observed state of a Fleet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.FleetStatus")]
pub struct FleetStatus {
    /// The generation observed by the Fleet controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Components whose Ships are all ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_components: Option<i32>,
    /// Number of components.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_components: Option<i32>,
    /// Per-component replica counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<FleetComponentStatus>,
    /// Latest observations (`Ready`, `NetworkReady`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Observed state of one Fleet component.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[schemars(rename = "io.tugboat.apps.v1.FleetComponentStatus")]
pub struct FleetComponentStatus {
    /// Component name.
    #[schemars(extend("x-required" = true))]
    pub name: String,
    /// Ships of the component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready Ships of the component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Ships with the current template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// All Ships of the component are ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

impl Kind for Fleet {
    fn apply_defaults(&mut self) {
        for c in &mut self.spec.components {
            c.replicas.get_or_insert(1);
            c.ship_template.spec.apply_defaults();
        }
    }

    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(n) = self.spec.network_class_name.as_deref() {
            super::common::check_subdomain(n, "spec.networkClassName", &mut errs);
        }
        if self.spec.components.is_empty() {
            errs.push(FieldError::required(
                "spec.components",
                "must have at least one component",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.spec.components.iter().enumerate() {
            let p = format!("spec.components[{i}]");
            if c.name.is_empty() {
                errs.push(FieldError::required(format!("{p}.name"), ""));
            } else {
                check_label(&c.name, &format!("{p}.name"), &mut errs);
                if !names.insert(c.name.clone()) {
                    errs.push(FieldError::duplicate(format!("{p}.name"), &json!(c.name)));
                }
            }
            check_replicas(c.replicas, &format!("{p}.replicas"), &mut errs);
            errs.extend(
                c.ship_template
                    .spec
                    .validate(&format!("{p}.shipTemplate.spec")),
            );
        }
        if let Some(st) = &self.status {
            errs.extend(validate_conditions(&st.conditions, "status.conditions"));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Components", "integer", "Number of components.", 0),
            col("Ready", "string", "Ready components out of all.", 0),
            col(
                "Network",
                "string",
                "NetworkClass shared by the components.",
                0,
            ),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        let total = st
            .total_components
            .unwrap_or(self.spec.components.len() as i32);
        vec![
            name_cell(obj),
            json!(self.spec.components.len()),
            json!(format!("{}/{}", st.ready_components.unwrap_or(0), total)),
            json!(self
                .spec
                .network_class_name
                .clone()
                .unwrap_or_else(|| "<none>".into())),
            age_cell(obj, now),
        ]
    }
}
