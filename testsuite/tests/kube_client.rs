//! The apiserver driven by a Rust client: kube-rs 5 with k8s-openapi 0.29 types.
//!
//! - typed access: a small [`Ship`] type implementing `kube::Resource`, k8s-openapi's
//!   `ConfigMap` and `Namespace`, and `LeaseSpec` through the dotless `coordination/v1` group;
//! - create / get / list / patch (merge, server-side apply) / replace with a stale
//!   resourceVersion (409) / delete, and their Status errors;
//! - a paged list (`limit` + `continue`) across 25 Ships, consistent with its first page;
//! - the dynamic API through discovery (legacy and aggregated);
//! - an informer (`watcher` + `reflector`) that keeps converging across a `tugboatd` restart.
//!
//! Each scenario runs against a `tugboatd` on its own store and against one whose apiserver
//! uses Debian's etcd (`--etcd-endpoints`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, Scope};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tugboat_testsuite::kube::{
    admin_client, eventually, install_crypto, must, start_with_api, wait_api_ready,
};
use tugboat_testsuite::{test_runtime, EtcdNode, EtcdOptions, TugboatNode, TugboatOptions};

const IMAGE: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";

// ---------------------------------------------------------------------------------------------
// A typed Ship (Tugboat's core/v1 kind) for kube-rs.

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ship {
    #[serde(default = "ship_api_version")]
    api_version: String,
    #[serde(default = "ship_kind")]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: ShipSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<ShipStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShipSpec {
    #[serde(default)]
    image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ship_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runtime_class: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShipStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
}

fn ship_api_version() -> String {
    "v1".into()
}

fn ship_kind() -> String {
    "Ship".into()
}

impl Resource for Ship {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Ship".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "ships".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn ship(name: &str, labels: &[(&str, &str)]) -> Ship {
    Ship {
        api_version: ship_api_version(),
        kind: ship_kind(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..ObjectMeta::default()
        },
        spec: ShipSpec {
            image: IMAGE.into(),
            ship_class: Some("lightweight".into()),
            ..ShipSpec::default()
        },
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The Status of a failed call (panics on success or a non-API error).
fn api_error<T: std::fmt::Debug>(what: &str, r: kube::Result<T>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(status)) => *status,
        Err(e) => panic!("{what}: expected a Status error from the server, got {e:?}"),
        Ok(v) => panic!("{what}: expected a Status error from the server, got success {v:?}"),
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = must(
        "create namespace",
        nss.create(&PostParams::default(), &ns).await,
    );
    assert_eq!(created.name_any(), name);
    assert!(created.uid().is_some(), "namespace uid");
    let got = must("get namespace", nss.get(name).await);
    assert_eq!(
        got.status.and_then(|s| s.phase).as_deref(),
        Some("Active"),
        "a new namespace is Active"
    );
}

fn start_on_etcd() -> (EtcdNode, TugboatNode) {
    let etcd = EtcdNode::start(EtcdOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let node = TugboatNode::start(TugboatOptions {
        api: true,
        extra_args: vec!["--etcd-endpoints".into(), etcd.plain_endpoint()],
        ..TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    (etcd, node)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn typed_crud(client: Client) {
    let ns = "kube-rs-e2e";
    create_namespace(&client, ns).await;

    // ConfigMap (k8s-openapi type).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cm1".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "kube-rs".to_string())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("a".to_string(), "1".to_string())])),
        ..ConfigMap::default()
    };
    let created = must(
        "create configmap",
        cms.create(&PostParams::default(), &cm).await,
    );
    let rv1 = created.resource_version().unwrap_or_default();
    assert!(rv1.parse::<u64>().is_ok(), "resourceVersion {rv1:?}");
    assert!(created.uid().is_some_and(|u| !u.is_empty()));
    assert!(created.creation_timestamp().is_some());
    let got = must("get configmap", cms.get("cm1").await);
    assert_eq!(got.data, cm.data);
    assert_eq!(got.uid(), created.uid());

    let dup = api_error(
        "create of an existing ConfigMap",
        cms.create(&PostParams::default(), &cm).await,
    );
    assert_eq!(
        (dup.code, dup.reason.as_str()),
        (409, "AlreadyExists"),
        "{dup:?}"
    );
    let missing = api_error("get of a missing ConfigMap", cms.get("nope").await);
    assert_eq!(
        (missing.code, missing.reason.as_str()),
        (404, "NotFound"),
        "{missing:?}"
    );
    assert!(must("get_opt", cms.get_opt("nope").await).is_none());

    let patched = must(
        "merge patch",
        cms.patch(
            "cm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await,
    );
    assert_eq!(
        patched.data,
        Some(BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string())
        ]))
    );
    let rv2 = patched.resource_version().unwrap_or_default();
    assert_ne!(rv1, rv2, "a patch changes resourceVersion");

    // Replace with the stale object (resourceVersion rv1) → 409 Conflict; with the fresh one → ok.
    let mut stale = created.clone();
    stale.data = Some(BTreeMap::from([("stale".to_string(), "yes".to_string())]));
    let conflict = api_error(
        "replace with a stale resourceVersion",
        cms.replace("cm1", &PostParams::default(), &stale).await,
    );
    assert_eq!(
        (conflict.code, conflict.reason.as_str()),
        (409, "Conflict"),
        "{conflict:?}"
    );
    let mut fresh = patched.clone();
    fresh.data = Some(BTreeMap::from([("fresh".to_string(), "yes".to_string())]));
    let replaced = must(
        "replace with the current resourceVersion",
        cms.replace("cm1", &PostParams::default(), &fresh).await,
    );
    assert_eq!(replaced.data, fresh.data);

    // Server-side apply creates, records managedFields, and detects conflicts.
    let ssa = PatchParams::apply("kube-rs-e2e");
    let applied = must(
        "server-side apply (create)",
        cms.patch(
            "cm-ssa",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm-ssa"},
                "data": {"k": "v1"}
            })),
        )
        .await,
    );
    assert_eq!(
        applied
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("v1")
    );
    assert!(
        applied
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kube-rs-e2e")
                && m.operation.as_deref() == Some("Apply")),
        "managedFields after apply: {:?}",
        applied.managed_fields()
    );
    let other = PatchParams::apply("someone-else");
    let clash = api_error(
        "apply of an owned field by another manager",
        cms.patch(
            "cm-ssa",
            &other,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-ssa"}, "data": {"k": "v2"}})),
        )
        .await,
    );
    assert_eq!(
        (clash.code, clash.reason.as_str()),
        (409, "Conflict"),
        "{clash:?}"
    );
    let forced = must(
        "forced apply",
        cms.patch(
            "cm-ssa",
            &other.clone().force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-ssa"}, "data": {"k": "v2"}})),
        )
        .await,
    );
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("v2")
    );

    let list = must(
        "list configmaps",
        cms.list(&ListParams::default().labels("app=kube-rs")).await,
    );
    assert_eq!(
        list.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        vec!["cm1"]
    );
    assert!(
        list.metadata
            .resource_version
            .is_some_and(|rv| rv.parse::<u64>().is_ok()),
        "list resourceVersion"
    );

    let _ = must(
        "delete configmap",
        cms.delete("cm1", &DeleteParams::default()).await,
    );
    let gone = api_error("get after delete", cms.get("cm1").await);
    assert_eq!(gone.code, 404);
    let again = api_error(
        "delete of a missing ConfigMap",
        cms.delete("cm1", &DeleteParams::default()).await,
    );
    assert_eq!((again.code, again.reason.as_str()), (404, "NotFound"));

    // Ship (Tugboat type).
    let ships: Api<Ship> = Api::namespaced(client.clone(), ns);
    let s = must(
        "create ship",
        ships
            .create(
                &PostParams::default(),
                &ship("typed", &[("app", "kube-rs")]),
            )
            .await,
    );
    assert_eq!(
        s.spec.run_strategy.as_deref(),
        Some("Always"),
        "runStrategy defaults to Always"
    );
    assert_eq!(
        s.status.as_ref().and_then(|st| st.phase.as_deref()),
        Some("Pending"),
        "new Ship is Pending"
    );
    assert_eq!(s.metadata.generation, Some(1));
    assert_eq!(s.namespace().as_deref(), Some(ns));
    let p = must(
        "merge patch ship spec",
        ships
            .patch(
                "typed",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
            )
            .await,
    );
    assert_eq!(p.spec.run_strategy.as_deref(), Some("Halted"));
    assert_eq!(
        p.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    let st = must(
        "patch ship status",
        ships
            .patch_status(
                "typed",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running"}})),
            )
            .await,
    );
    assert_eq!(st.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    assert_eq!(
        st.metadata.generation,
        Some(2),
        "status write keeps generation"
    );
    let invalid = api_error(
        "invalid runStrategy",
        ships
            .patch(
                "typed",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"runStrategy": "Sometimes"}})),
            )
            .await,
    );
    assert_eq!(
        (invalid.code, invalid.reason.as_str()),
        (422, "Invalid"),
        "{invalid:?}"
    );
    let causes = invalid
        .details
        .as_ref()
        .map(|d| d.causes.clone())
        .unwrap_or_default();
    assert!(
        causes.iter().any(|c| c.field == "spec.runStrategy"),
        "422 details.causes names spec.runStrategy: {invalid:?}"
    );
    let strict = api_error(
        "unknown field under Strict",
        ships
            .patch(
                "typed",
                &PatchParams::default().validation_strict(),
                &Patch::Merge(json!({"spec": {"bogus": 1}})),
            )
            .await,
    );
    assert_eq!(strict.code, 400, "{strict:?}");
    assert!(
        strict.message.contains("unknown field \"spec.bogus\""),
        "{strict:?}"
    );
    let mut current = must("get ship", ships.get("typed").await);
    current.spec.image = "img-replaced".into();
    let r = must(
        "replace ship",
        ships
            .replace("typed", &PostParams::default(), &current)
            .await,
    );
    assert_eq!(r.spec.image, "img-replaced");
    let bad = api_error(
        "replace with a stale Ship",
        ships
            .replace("typed", &PostParams::default(), &current)
            .await,
    );
    assert_eq!(bad.code, 409, "{bad:?}");
    let dry = must(
        "dry-run create",
        ships
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &ship("dry", &[]),
            )
            .await,
    );
    assert_eq!(dry.name_any(), "dry");
    assert!(
        must("get_opt dry", ships.get_opt("dry").await).is_none(),
        "dry run stores nothing"
    );

    // Lease through the dotless coordination/v1 group, spec typed by k8s-openapi.
    let lease_ar = ApiResource {
        group: "coordination".into(),
        version: "v1".into(),
        api_version: "coordination/v1".into(),
        kind: "Lease".into(),
        plural: "leases".into(),
    };
    let leases: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &lease_ar);
    let spec = LeaseSpec {
        holder_identity: Some("kube-rs".into()),
        lease_duration_seconds: Some(15),
        ..LeaseSpec::default()
    };
    let mut lease = DynamicObject::new("leader", &lease_ar);
    lease.data = json!({ "spec": spec });
    must(
        "create lease",
        leases.create(&PostParams::default(), &lease).await,
    );
    let got = must("get lease", leases.get("leader").await);
    let got_spec: LeaseSpec = serde_json::from_value(got.data["spec"].clone())
        .unwrap_or_else(|e| panic!("lease spec: {e}: {got:?}"));
    assert_eq!(got_spec.holder_identity.as_deref(), Some("kube-rs"));
    assert_eq!(got_spec.lease_duration_seconds, Some(15));
    let renewed = must(
        "renew lease",
        leases
            .patch(
                "leader",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"leaseTransitions": 1}})),
            )
            .await,
    );
    assert_eq!(renewed.data["spec"]["leaseTransitions"], 1);

    // The same Lease through coordination.k8s.io/v1 with k8s-openapi's typed Lease (what
    // client-go and kube-rs leader election use): one object, two groups.
    let typed: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), ns);
    let seen = must("get typed lease", typed.get("leader").await);
    assert_eq!(
        seen.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(1)
    );
    let moved = must(
        "update typed lease",
        typed
            .patch(
                "leader",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "other"}})),
            )
            .await,
    );
    assert_eq!(
        moved.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("other")
    );
    let again = must("get lease after typed update", leases.get("leader").await);
    assert_eq!(again.data["spec"]["holderIdentity"], "other");
}

async fn paged_list(client: Client) {
    let ns = "kube-rs-paging";
    create_namespace(&client, ns).await;
    let ships: Api<Ship> = Api::namespaced(client.clone(), ns);
    let mut want = BTreeSet::new();
    for i in 0..25 {
        let name = format!("page-{i:02}");
        must(
            "create ship",
            ships
                .create(&PostParams::default(), &ship(&name, &[("page", "yes")]))
                .await,
        );
        want.insert(name);
    }
    must(
        "create unlabelled ship",
        ships
            .create(&PostParams::default(), &ship("other", &[]))
            .await,
    );

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    let mut late_created = false;
    loop {
        let mut lp = ListParams::default().labels("page=yes").limit(10);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = must("list page", ships.list(&lp).await);
        pages.push(page.items.len());
        seen.extend(page.items.iter().map(|s| s.name_any()));
        if !late_created {
            // A Ship created after the first page is not part of this (consistent) list.
            must(
                "create late ship",
                ships
                    .create(
                        &PostParams::default(),
                        &ship("page-late", &[("page", "yes")]),
                    )
                    .await,
            );
            late_created = true;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => token = Some(c),
            None => break,
        }
        assert!(pages.len() <= 10, "paging does not end: pages {pages:?}");
    }
    assert_eq!(pages, vec![10, 10, 5], "25 Ships in pages of 10");
    let seen_set: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        seen_set.len(),
        seen.len(),
        "no Ship twice across pages: {seen:?}"
    );
    assert_eq!(
        seen_set, want,
        "the paged list is the snapshot of its first page"
    );
    let all = must(
        "list all",
        ships.list(&ListParams::default().labels("page=yes")).await,
    );
    assert_eq!(all.items.len(), 26, "a fresh list sees the late Ship");
    let unlimited = must(
        "list unlabelled",
        ships.list(&ListParams::default().labels("!page")).await,
    );
    assert_eq!(
        unlimited
            .items
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>(),
        vec!["other"]
    );
}

async fn dynamic_discovery(client: Client) {
    let ns = "kube-rs-dynamic";
    create_namespace(&client, ns).await;
    for aggregated in [false, true] {
        let d = Discovery::new(client.clone());
        let d = if aggregated {
            must("aggregated discovery", d.run_aggregated().await)
        } else {
            must("legacy discovery", d.run().await)
        };
        let label = if aggregated { "aggregated" } else { "legacy" };
        for g in [
            "",
            "apps",
            "authorization",
            "rbac.authorization.k8s.io",
            "coordination",
        ] {
            assert!(
                d.has_group(g),
                "{label} discovery lacks group {g:?}; groups: {:?}",
                d.groups().map(|g| g.name().to_string()).collect::<Vec<_>>()
            );
        }
        let cases = [
            ("", "v1", "Ship", "ships", Scope::Namespaced),
            ("", "v1", "ShipClass", "shipclasses", Scope::Cluster),
            ("apps", "v1", "Fleet", "fleets", Scope::Namespaced),
            ("apps", "v1", "Deployment", "deployments", Scope::Namespaced),
            (
                "authorization",
                "v1",
                "ClusterRole",
                "clusterroles",
                Scope::Cluster,
            ),
            ("coordination", "v1", "Lease", "leases", Scope::Namespaced),
        ];
        for (group, version, kind, plural, scope) in cases {
            let (ar, caps) = d
                .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
                .unwrap_or_else(|| {
                    panic!("{label} discovery cannot resolve {group}/{version} {kind}")
                });
            assert_eq!(ar.plural, plural, "{label}: plural of {kind}");
            assert_eq!(caps.scope, scope, "{label}: scope of {kind}");
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                assert!(
                    caps.operations.iter().any(|o| o == verb),
                    "{label}: {kind} lacks verb {verb}: {:?}",
                    caps.operations
                );
            }
        }
        let (ship_ar, caps) = d
            .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Ship"))
            .unwrap_or_else(|| panic!("no Ship"));
        assert!(
            caps.subresources
                .iter()
                .any(|(sub, _)| sub.plural == "status"),
            "{label}: ships/status subresource in discovery: {:?}",
            caps.subresources
                .iter()
                .map(|(s, _)| s.plural.clone())
                .collect::<Vec<_>>()
        );
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ship_ar);
        let name = format!("dyn-{label}");
        let mut obj = DynamicObject::new(&name, &ship_ar);
        obj.data = json!({"spec": {"image": IMAGE, "shipClass": "lightweight"}});
        let created = must(
            "dynamic create",
            api.create(&PostParams::default(), &obj).await,
        );
        assert_eq!(created.data["spec"]["runStrategy"], "Always");
        let list = must("dynamic list", api.list(&ListParams::default()).await);
        assert!(
            list.items.iter().any(|o| o.name_any() == name),
            "dynamic list finds {name}"
        );

        let (fleet_ar, _) = d
            .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Fleet"))
            .unwrap_or_else(|| panic!("no Fleet"));
        let fleets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &fleet_ar);
        let mut fleet = DynamicObject::new(&format!("fleet-{label}"), &fleet_ar);
        fleet.data = json!({"spec": {"networkClassName": "net", "components": [
            {"name": "web", "replicas": 2, "shipTemplate": {"metadata": {"labels": {"role": "web"}}, "spec": {"image": IMAGE, "shipClass": "lightweight"}}}
        ]}});
        let f = must(
            "dynamic create fleet",
            fleets.create(&PostParams::default(), &fleet).await,
        );
        assert_eq!(f.data["spec"]["components"][0]["replicas"], 2);
        assert_eq!(
            f.types.as_ref().map(|t| t.api_version.as_str()),
            Some("apps/v1")
        );
    }
}

/// Names (and data value `v`) of the ConfigMaps in the reflector's store.
fn store_state(store: &reflector::Store<ConfigMap>) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .map(|c| {
            (
                c.name_any(),
                c.data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn labelled_cm(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "informer".to_string(),
                "yes".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), v.to_string())])),
        ..ConfigMap::default()
    }
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

type ErrorLog = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

async fn converge(
    store: &reflector::Store<ConfigMap>,
    errors: &ErrorLog,
    want: BTreeMap<String, String>,
    what: &str,
) {
    eventually(what, Duration::from_secs(120), || {
        let got = store_state(store);
        let want = want.clone();
        let errs = errors.lock().map(|e| e.clone()).unwrap_or_default();
        async move {
            if got == want {
                Ok(())
            } else {
                let n = errs.len();
                let last: Vec<&String> = errs.iter().skip(n.saturating_sub(3)).collect();
                Err(format!(
                    "store {got:?}, want {want:?}; {n} watcher errors so far, the last: {last:?}"
                ))
            }
        }
    })
    .await
}

/// The informer scenario: writes, a `tugboatd` restart, more writes; the store follows.
fn informer_across_restart(node: &mut TugboatNode) {
    let rt = test_runtime();
    let ns = "kube-rs-informer";
    let client = rt.block_on(admin_client(node));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    rt.block_on(async {
        create_namespace(&client, ns).await;
        for (n, v) in [("a", "1"), ("b", "1"), ("c", "1")] {
            must(
                "create",
                cms.create(&PostParams::default(), &labelled_cm(n, v)).await,
            );
        }
        must(
            "create unlabelled",
            cms.create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("unlabelled".into()),
                        ..ObjectMeta::default()
                    },
                    ..ConfigMap::default()
                },
            )
            .await,
        );
    });

    let (store, writer) = reflector::store::<ConfigMap>();
    let errors: ErrorLog = ErrorLog::default();
    let errors_in_task = errors.clone();
    let stream = reflector(
        writer,
        watcher(
            cms.clone(),
            watcher::Config::default()
                .labels("informer=yes")
                .timeout(20),
        ),
    )
    .default_backoff();
    let task = rt.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                eprintln!("informer: watcher error (retried): {e}");
                if let Ok(mut log) = errors_in_task.lock() {
                    log.push(format!("{e}: {e:?}"));
                }
            }
        }
    });

    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), store.wait_until_ready())
            .await
            .unwrap_or_else(|_| panic!("the informer's initial list did not complete within 60 s"))
            .unwrap_or_else(|e| panic!("store: {e}"));
        converge(
            &store,
            &errors,
            expect(&[("a", "1"), ("b", "1"), ("c", "1")]),
            "initial list",
        )
        .await;
        must(
            "create d",
            cms.create(&PostParams::default(), &labelled_cm("d", "1"))
                .await,
        );
        must("delete a", cms.delete("a", &DeleteParams::default()).await);
        must(
            "patch b",
            cms.patch(
                "b",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": "2"}})),
            )
            .await,
        );
        converge(
            &store,
            &errors,
            expect(&[("b", "2"), ("c", "1"), ("d", "1")]),
            "watch events before the restart",
        )
        .await;
        // Outlive at least one server-side watch timeout (timeoutSeconds=20): the watch is renewed.
        tokio::time::sleep(Duration::from_secs(21)).await;
        must(
            "patch c",
            cms.patch(
                "c",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": "2"}})),
            )
            .await,
        );
        converge(
            &store,
            &errors,
            expect(&[("b", "2"), ("c", "2"), ("d", "1")]),
            "after a watch timeout",
        )
        .await;
    });

    let rv_before = rt.block_on(async {
        let list = must(
            "list before restart",
            cms.list(&ListParams::default()).await,
        );
        list.metadata.resource_version.unwrap_or_default()
    });
    let t = Instant::now();
    node.restart().unwrap_or_else(|e| panic!("restart: {e}"));
    eprintln!("informer test: tugboatd restarted in {:?}", t.elapsed());
    wait_api_ready(node).unwrap_or_else(|e| panic!("{e}"));

    rt.block_on(async {
        // A watch from a resourceVersion the server no longer serves answers 200 and an ERROR
        // event (Status 410 Expired) — or replays what followed. kube-rs re-lists only on the
        // ERROR event; an HTTP 410 makes it retry the same resourceVersion forever.
        let wp = WatchParams::default().timeout(3);
        // A fresh client (a new connection), so that only the server decides the answer.
        let fresh: Api<ConfigMap> = Api::namespaced(admin_client(node).await, ns);
        let started = Instant::now();
        let probe =
            tokio::time::timeout(Duration::from_secs(60), fresh.watch(&wp, &rv_before)).await;
        eprintln!(
            "informer test: post-restart watch probe answered after {:?}",
            started.elapsed()
        );
        let probe = probe.unwrap_or_else(|_| {
            panic!("watch from the pre-restart resourceVersion {rv_before}: no answer within 60 s")
        });
        match probe {
            Err(kube::Error::Api(st)) => panic!(
                "watch from the pre-restart resourceVersion {rv_before} answered HTTP {} {} \
                 ({:?}) instead of a 200 stream with an ERROR event: informers never re-list",
                st.code, st.reason, st.message
            ),
            Err(e) => panic!("watch from {rv_before} after the restart: {e:?}"),
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                let first = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
                if let Ok(Some(Ok(WatchEvent::Error(st)))) = &first {
                    assert_eq!((st.code, st.reason.as_str()), (410, "Expired"), "{st:?}");
                }
                if let Ok(Some(Err(e))) = first {
                    panic!("watch from {rv_before} after the restart: {e:?}");
                }
            }
        }
    });

    rt.block_on(async {
        // Writes right after the restart, while the informer may still be reconnecting.
        must(
            "create e",
            cms.create(&PostParams::default(), &labelled_cm("e", "1"))
                .await,
        );
        must("delete c", cms.delete("c", &DeleteParams::default()).await);
        must(
            "patch d",
            cms.patch(
                "d",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"v": "3"}})),
            )
            .await,
        );
        // Relabelling moves an object out of the selected set and another one in.
        must(
            "unlabel b",
            cms.patch(
                "b",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"informer": null}}})),
            )
            .await,
        );
        must(
            "label unlabelled",
            cms.patch(
                "unlabelled",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"informer": "yes"}}, "data": {"v": "9"}}),
                ),
            )
            .await,
        );
        converge(
            &store,
            &errors,
            expect(&[("d", "3"), ("e", "1"), ("unlabelled", "9")]),
            "after the restart",
        )
        .await;
        // And new writes keep arriving through the re-established watch.
        must(
            "create f",
            cms.create(&PostParams::default(), &labelled_cm("f", "1"))
                .await,
        );
        must("delete e", cms.delete("e", &DeleteParams::default()).await);
        converge(
            &store,
            &errors,
            expect(&[("d", "3"), ("f", "1"), ("unlabelled", "9")]),
            "new writes after the restart",
        )
        .await;
        // The store matches a fresh list, resourceVersions included.
        let list = must(
            "list",
            cms.list(&ListParams::default().labels("informer=yes"))
                .await,
        );
        let fresh: BTreeMap<String, Option<String>> = list
            .items
            .iter()
            .map(|c| (c.name_any(), c.resource_version()))
            .collect();
        let cached: BTreeMap<String, Option<String>> = store
            .state()
            .iter()
            .map(|c| (c.name_any(), c.resource_version()))
            .collect();
        assert_eq!(
            cached, fresh,
            "informer cache equals a fresh list (names and resourceVersions)"
        );
    });
    eprintln!(
        "informer saw {} retried watcher errors across the restart",
        errors.lock().map(|e| e.len()).unwrap_or(0)
    );
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn typed_dynamic_and_paging_on_tugboat_store() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        typed_crud(client.clone()).await;
        paged_list(client.clone()).await;
        dynamic_discovery(client).await;
    });
}

#[test]
fn typed_dynamic_and_paging_on_debian_etcd() {
    install_crypto();
    let (_etcd, node) = start_on_etcd();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        typed_crud(client.clone()).await;
        paged_list(client.clone()).await;
        dynamic_discovery(client).await;
    });
}

#[test]
fn informer_survives_restart_on_tugboat_store() {
    install_crypto();
    let mut node = start_with_api();
    informer_across_restart(&mut node);
}

#[test]
fn informer_survives_restart_on_debian_etcd() {
    install_crypto();
    let (_etcd, mut node) = start_on_etcd();
    informer_across_restart(&mut node);
}

/// Creates through the API from 8 concurrent writers until `kill -9`; after the restart every
/// create that was acknowledged (201) is there with the resourceVersion it was acknowledged
/// with (creates in flight at the kill may or may not have landed).
#[test]
fn acknowledged_api_writes_survive_kill_9() {
    install_crypto();
    let mut node = start_with_api();
    let rt = test_runtime();
    let acked: Vec<(String, String)> = rt.block_on(async {
        let client = admin_client(&node).await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let api = api.clone();
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("durable-{w}-{i}");
                    i += 1;
                    if let Ok(cm) = api
                        .create(&PostParams::default(), &labelled_cm(&name, "x"))
                        .await
                    {
                        acked.push((name, cm.resource_version().unwrap_or_default()));
                    }
                }
                acked
            }));
        }
        // Let some writes land, then pull the plug while writers are still going.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = api
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
            if n >= 300 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for w in writers {
            all.extend(w.await.unwrap_or_default());
        }
        all
    });
    assert!(
        acked.len() >= 300,
        "only {} creates acknowledged",
        acked.len()
    );
    node.restart()
        .unwrap_or_else(|e| panic!("restart after kill -9: {e}"));
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let client = admin_client(&node).await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let list = must("list after restart", api.list(&ListParams::default()).await);
        let present: BTreeMap<String, String> = list
            .items
            .iter()
            .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
            .collect();
        let mut lost = Vec::new();
        for (name, rv) in &acked {
            match present.get(name) {
                Some(have) if have == rv => {}
                other => lost.push(format!("{name} (acked at {rv}, now {other:?})")),
            }
        }
        assert!(
            lost.is_empty(),
            "{} acknowledged creates lost or changed: {lost:?}",
            lost.len()
        );
        println!(
            "{} creates acknowledged before kill -9, all present after restart ({} objects listed)",
            acked.len(),
            present.len()
        );
    });
}
