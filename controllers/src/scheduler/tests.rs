use super::*;
use k8s_openapi::api::core::v1::{NodeAffinity, NodeCondition, NodeSelector, NodeSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tugboat_api::kinds::core::{CniPluginStatus, NodeStatus, ShipAffinity};

fn node(name: &str, cpu: &str, mem: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: [
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(mem.into())),
            ]
            .into(),
            conditions: vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }],
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

fn class(name: &str, cores: i32, mem: &str) -> ShipClass {
    let mut c = ShipClass::default();
    c.metadata.name = Some(name.into());
    c.spec.cpu.cores = cores;
    c.spec.memory.size = Quantity(mem.into());
    c
}

fn ship(name: &str, class: &str) -> Ship {
    let mut s = Ship::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    s.spec.ship_class = class.into();
    s
}

fn state(nodes: Vec<Node>) -> ClusterState {
    ClusterState::new(
        nodes.into_iter().map(Arc::new),
        [
            Arc::new(class("small", 2, "2Gi")),
            Arc::new(class("big", 4, "64Gi")),
        ],
        Vec::new(),
        Vec::new(),
        Vec::new(),
    )
}

fn info(n: Node) -> NodeInfo {
    NodeInfo::new(Arc::new(n))
}

fn needs(cpu_milli: f64, memory: f64) -> ShipNeeds {
    ShipNeeds {
        request: Request { cpu_milli, memory },
        ..ShipNeeds::default()
    }
}

const GI: f64 = 1024.0 * 1024.0 * 1024.0;

#[test]
fn resource_fit_counts_bound_ships_and_overcommit() {
    let mut i = info(node("a", "4", "8Gi"));
    assert!(filter_resources(&needs(4000.0, 8.0 * GI), &i).is_ok());
    i.add(needs(2000.0, 6.0 * GI).request, None);
    assert_eq!(
        filter_resources(&needs(4000.0, 4.0 * GI), &i),
        Err(vec![Unfit::InsufficientCpu, Unfit::InsufficientMemory])
    );
    let mut n = node("a", "4", "8Gi");
    n.metadata.annotations = Some(
        [
            (CPU_OVERCOMMIT_ANNOTATION.to_string(), "2".to_string()),
            (MEMORY_OVERCOMMIT_ANNOTATION.to_string(), "1.5".to_string()),
        ]
        .into(),
    );
    let mut i = info(n);
    i.add(needs(2000.0, 6.0 * GI).request, None);
    assert!(filter_resources(&needs(4000.0, 6.0 * GI), &i).is_ok());
    // Invalid ratios fall back to 1.0.
    let mut n = node("a", "4", "8Gi");
    n.metadata.annotations =
        Some([(CPU_OVERCOMMIT_ANNOTATION.to_string(), "-3".to_string())].into());
    assert_eq!(overcommit(&n, CPU_OVERCOMMIT_ANNOTATION), 1.0);
}

#[test]
fn node_name_pin() {
    let mut s = ship("s", "small");
    assert!(filter_node_name(&s, &node("a", "1", "1Gi")).is_ok());
    s.spec.node_name = Some("b".into());
    assert_eq!(
        filter_node_name(&s, &node("a", "1", "1Gi")),
        Err(Unfit::NodeName)
    );
    assert!(filter_node_name(&s, &node("b", "1", "1Gi")).is_ok());
}

#[test]
fn node_selector_and_affinity() {
    let mut n = node("a", "1", "1Gi");
    n.metadata.labels = Some(
        [
            ("zone".to_string(), "z1".to_string()),
            ("gen".to_string(), "5".to_string()),
        ]
        .into(),
    );
    let mut s = ship("s", "small");
    s.spec.node_selector = [("zone".to_string(), "z2".to_string())].into();
    assert_eq!(filter_node_affinity(&s, &n), Err(Unfit::NodeAffinity));
    s.spec.node_selector = [("zone".to_string(), "z1".to_string())].into();
    assert!(filter_node_affinity(&s, &n).is_ok());
    let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    };
    let with_terms = |terms: Vec<NodeSelectorTerm>| {
        let mut s = ship("s", "small");
        s.spec.affinity = Some(ShipAffinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..NodeAffinity::default()
            }),
            ..ShipAffinity::default()
        });
        s
    };
    let term = |exprs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
        match_expressions: Some(exprs),
        match_fields: None,
    };
    assert!(filter_node_affinity(
        &with_terms(vec![term(vec![req("zone", "In", &["z1", "z3"])])]),
        &n
    )
    .is_ok());
    assert!(filter_node_affinity(
        &with_terms(vec![term(vec![
            req("gen", "Gt", &["4"]),
            req("gpu", "DoesNotExist", &[])
        ])]),
        &n
    )
    .is_ok());
    assert!(filter_node_affinity(
        &with_terms(vec![term(vec![req("zone", "NotIn", &["z1"])])]),
        &n
    )
    .is_err());
    // ORed terms: the second matches.
    assert!(filter_node_affinity(
        &with_terms(vec![
            term(vec![req("gpu", "Exists", &[])]),
            term(vec![req("gen", "Lt", &["6"])])
        ]),
        &n
    )
    .is_ok());
    // An empty term and an empty term list match nothing.
    assert!(filter_node_affinity(&with_terms(vec![term(vec![])]), &n).is_err());
    assert!(filter_node_affinity(&with_terms(vec![]), &n).is_err());
    // matchFields on metadata.name.
    let by_name = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![req("metadata.name", "In", &["a"])]),
    };
    assert!(filter_node_affinity(&with_terms(vec![by_name]), &n).is_ok());
}

#[test]
fn taints_and_tolerations() {
    let mut n = node("a", "1", "1Gi");
    n.spec = Some(NodeSpec {
        taints: Some(vec![
            Taint {
                key: "dedicated".into(),
                value: Some("db".into()),
                effect: "NoSchedule".into(),
                ..Taint::default()
            },
            Taint {
                key: "soft".into(),
                effect: "PreferNoSchedule".into(),
                ..Taint::default()
            },
        ]),
        ..NodeSpec::default()
    });
    let mut s = ship("s", "small");
    assert_eq!(
        filter_taints(&s, &n),
        Err(Unfit::Taint("dedicated: db".into()))
    );
    assert_eq!(
        Unfit::Taint("dedicated: db".into()).to_string(),
        "node(s) had untolerated taint {dedicated: db}"
    );
    s.spec.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        value: Some("web".into()),
        ..Toleration::default()
    }];
    assert!(filter_taints(&s, &n).is_err());
    s.spec.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("db".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }];
    assert!(filter_taints(&s, &n).is_ok());
    s.spec.tolerations = vec![Toleration {
        operator: Some("Exists".into()),
        ..Toleration::default()
    }];
    assert!(filter_taints(&s, &n).is_ok());
    s.spec.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        ..Toleration::default()
    }];
    assert!(filter_taints(&s, &n).is_err());
}

#[test]
fn unschedulable_and_ready() {
    let mut n = node("a", "1", "1Gi");
    let s = ship("s", "small");
    assert!(filter_unschedulable(&s, &n).is_ok());
    assert!(filter_ready(&n).is_ok());
    if let Some(spec) = n.spec.as_mut() {
        spec.unschedulable = Some(true);
    }
    assert_eq!(filter_unschedulable(&s, &n), Err(Unfit::Unschedulable));
    if let Some(st) = n.status.as_mut() {
        st.conditions[0].status = "Unknown".into();
    }
    assert_eq!(filter_ready(&n), Err(Unfit::NotReady));
    n.status = None;
    assert_eq!(filter_ready(&n), Err(Unfit::NotReady));
}

#[test]
fn runtime_class_fit() {
    let mut n = node("a", "1", "1Gi");
    let mut s = ship("s", "small");
    let mut rc = RuntimeClass::default();
    rc.metadata.name = Some("qemu-migrate".into());
    rc.spec.live_migration = Some(false);
    let mut classes = HashMap::from([("qemu-migrate".to_string(), Arc::new(rc.clone()))]);
    let mut nd = ShipNeeds {
        runtime_class: Some(Arc::new(rc.clone())),
        ..ShipNeeds::default()
    };
    // No runtimeClass asked: any node.
    assert!(filter_runtime_class(&s, &nd, &n, &classes).is_ok());
    s.spec.runtime_class = Some("qemu-migrate".into());
    // Node without label: fits (no live migration needed).
    assert!(filter_runtime_class(&s, &nd, &n, &classes).is_ok());
    n.metadata.labels = Some([(RUNTIME_CLASS_LABEL.to_string(), "qemu".to_string())].into());
    assert_eq!(
        filter_runtime_class(&s, &nd, &n, &classes),
        Err(Unfit::RuntimeClass)
    );
    // Live migration needed: an unlabelled node does not prove it.
    rc.spec.live_migration = Some(true);
    classes.insert("qemu-migrate".into(), Arc::new(rc.clone()));
    nd.runtime_class = Some(Arc::new(rc));
    n.metadata.labels = None;
    assert_eq!(
        filter_runtime_class(&s, &nd, &n, &classes),
        Err(Unfit::LiveMigration)
    );
    n.metadata.labels =
        Some([(RUNTIME_CLASS_LABEL.to_string(), "qemu-migrate".to_string())].into());
    assert!(filter_runtime_class(&s, &nd, &n, &classes).is_ok());
    // Reported through status.runtimeClasses instead of the label.
    let mut reported = node("b", "1", "1Gi");
    if let Some(st) = reported.status.as_mut() {
        st.runtime_classes = vec!["qemu-migrate".into()];
    }
    assert!(filter_runtime_class(&s, &nd, &reported, &classes).is_ok());
    // The node opts out of migration.
    if let Some(l) = n.metadata.labels.as_mut() {
        l.insert(LIVE_MIGRATION_LABEL.into(), "false".into());
    }
    assert_eq!(
        filter_runtime_class(&s, &nd, &n, &classes),
        Err(Unfit::LiveMigration)
    );
    // The class object must say liveMigration: a node whose class lost it no longer fits.
    let mut plain = RuntimeClass::default();
    plain.metadata.name = Some("qemu-migrate".into());
    classes.insert("qemu-migrate".into(), Arc::new(plain));
    assert_eq!(
        filter_runtime_class(&s, &nd, &reported, &classes),
        Err(Unfit::LiveMigration)
    );
    assert_eq!(
        Unfit::LiveMigration.to_string(),
        "node(s) didn't support live migration"
    );
}

#[test]
fn network_fit() {
    let mut n = node("a", "1", "1Gi");
    let nd = ShipNeeds {
        cni_plugins: vec!["bridge".into()],
        ..ShipNeeds::default()
    };
    assert_eq!(filter_network(&nd, &n), Err(Unfit::Network));
    if let Some(st) = n.status.as_mut() {
        st.cni_plugins = vec![CniPluginStatus {
            name: "bridge".into(),
            ready: false,
            message: None,
        }];
    }
    assert_eq!(filter_network(&nd, &n), Err(Unfit::Network));
    if let Some(st) = n.status.as_mut() {
        st.cni_plugins[0].ready = true;
    }
    assert!(filter_network(&nd, &n).is_ok());
}

#[test]
fn network_needs_match_network_class_readiness() {
    let mut nc = NetworkClass::default();
    nc.metadata.name = Some("net".into());
    nc.metadata.namespace = Some("default".into());
    nc.spec.cni_plugin = "bridge".into();
    nc.spec.config = Some(serde_json::json!({
        "plugins": [{"type": "bridge"}, {"type": "firewall"}]
    }));
    let st = ClusterState::new(
        Vec::<Arc<Node>>::new(),
        [Arc::new(class("small", 2, "2Gi"))],
        Vec::new(),
        [Arc::new(nc)],
        Vec::new(),
    );
    let mut s = ship("s", "small");
    s.metadata.namespace = Some("default".into());
    s.spec.network_class_name = Some("net".into());
    let needs = st.needs(&s).expect("needs");
    // What `status.readyNodes` counts: the main plugin and every chained one, once each.
    assert_eq!(needs.cni_plugins, ["bridge", "firewall"]);
}

#[test]
fn scores_prefer_free_nodes_and_spread() {
    let nd = needs(1000.0, GI);
    let empty = info(node("a", "4", "8Gi"));
    let mut busy = info(node("b", "4", "8Gi"));
    busy.add(needs(2000.0, 4.0 * GI).request, Some("rs-1"));
    assert!(score_least_allocated(&nd, &empty) > score_least_allocated(&nd, &busy));
    assert_eq!(score_spread(Some("rs-1"), &busy, 1), 0.0);
    assert_eq!(score_spread(Some("rs-1"), &empty, 1), 100.0);
    assert_eq!(score_spread(None, &empty, 1), 0.0);
}

#[test]
fn schedule_picks_fitting_node_and_explains_failures() {
    let mut tainted = node("c", "64", "256Gi");
    tainted.spec = Some(NodeSpec {
        taints: Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]),
        ..NodeSpec::default()
    });
    let mut st = state(vec![node("a", "4", "8Gi"), node("b", "2", "4Gi"), tainted]);
    let d = schedule(&ship("s", "small"), &mut st);
    // Both a and b fit; a is emptier.
    assert_eq!(d.as_ref().map(|d| d.node.as_str()), Ok("a"));
    assert_eq!(d.map(|d| d.feasible), Ok(2));
    // Nothing fits "big" (64Gi): two nodes lack memory, the tainted one is tainted.
    let err = schedule(&ship("s", "big"), &mut st).map(|d| d.node);
    assert_eq!(
        err,
        Err(ScheduleError::NoFit(
            "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient memory, 1 node(s) had untolerated taint {dedicated: db}."
                .into()
        ))
    );
    assert_eq!(
        schedule(&ship("s", "missing"), &mut st),
        Err(ScheduleError::ShipClassNotFound("missing".into()))
    );
    // Placing Ships fills nodes up.
    st.place(&Arc::new(ship("x", "small")), "a");
    st.place(&Arc::new(ship("y", "small")), "a");
    assert_eq!(
        schedule(&ship("s", "small"), &mut st).map(|d| d.node),
        Ok("b".to_string())
    );
    // Spread: a controller's Ships avoid nodes that already hold one.
    let mut st = state(vec![node("a", "8", "16Gi"), node("b", "8", "16Gi")]);
    let mut owned = ship("o1", "small");
    owned.metadata.owner_references = Some(vec![OwnerReference {
        controller: Some(true),
        uid: "rs-1".into(),
        ..OwnerReference::default()
    }]);
    st.place(&Arc::new(owned.clone()), "a");
    let mut other = owned.clone();
    other.metadata.name = Some("o2".into());
    assert_eq!(
        schedule(&other, &mut st).map(|d| d.node),
        Ok("b".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// StorageFit.

use k8s_openapi::api::core::v1::{
    ContainerImage, ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeSpec,
    PersistentVolumeStatus, PodAffinity, PodAffinityTerm, PodAntiAffinity,
    TopologySpreadConstraint, VolumeNodeAffinity, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use tugboat_api::kinds::core::{ClaimVolumeSource, ShipVolume};

fn labelled(name: &str, labels: &[(&str, &str)]) -> Node {
    let mut n = node(name, "64", "256Gi");
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n
}

fn claim(
    name: &str,
    modes: &[&str],
    class: Option<&str>,
    volume: Option<&str>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            storage_class_name: class.map(str::to_string),
            volume_name: volume.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity("10Gi".into()))].into()),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

fn volume(
    name: &str,
    zone: Option<&str>,
    modes: &[&str],
    size: &str,
    phase: &str,
) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            capacity: Some([("storage".to_string(), Quantity(size.into()))].into()),
            node_affinity: zone.map(|z| VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "zone".into(),
                            operator: "In".into(),
                            values: Some(vec![z.into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some(phase.into()),
            ..PersistentVolumeStatus::default()
        }),
    }
}

fn with_claim(mut s: Ship, claim: &str) -> Ship {
    s.spec.volumes.push(ShipVolume {
        name: format!("v-{claim}"),
        persistent_volume_claim: Some(ClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..ShipVolume::default()
    });
    s
}

fn zones_state() -> ClusterState {
    state(vec![
        labelled("a", &[("zone", "z1")]),
        labelled("b", &[("zone", "z2")]),
    ])
}

#[test]
fn storage_fit_bound_claim_follows_volume_affinity() {
    let mut st = zones_state().with_storage(
        [Arc::new(claim(
            "data",
            &["ReadWriteOnce"],
            None,
            Some("pv-1"),
        ))],
        [Arc::new(volume(
            "pv-1",
            Some("z2"),
            &["ReadWriteOnce"],
            "10Gi",
            "Bound",
        ))],
        [],
    );
    let s = with_claim(ship("s", "small"), "data");
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b".to_string()));
    // The other zone only: explained per node.
    let mut st2 = state(vec![labelled("a", &[("zone", "z1")])]).with_storage(
        [Arc::new(claim(
            "data",
            &["ReadWriteOnce"],
            None,
            Some("pv-1"),
        ))],
        [Arc::new(volume(
            "pv-1",
            Some("z2"),
            &["ReadWriteOnce"],
            "10Gi",
            "Bound",
        ))],
        [],
    );
    assert_eq!(
        schedule(&s, &mut st2),
        Err(ScheduleError::NoFit(
            "0/1 nodes are available: 1 node(s) had volume node affinity conflict.".into()
        ))
    );
}

#[test]
fn storage_fit_missing_claim_or_volume_is_a_ship_error() {
    let mut st = zones_state();
    let s = with_claim(ship("s", "small"), "nope");
    assert_eq!(
        schedule(&s, &mut st),
        Err(ScheduleError::ClaimNotFound("nope".into()))
    );
    let mut st = zones_state().with_storage(
        [Arc::new(claim(
            "data",
            &["ReadWriteOnce"],
            None,
            Some("pv-gone"),
        ))],
        [],
        [],
    );
    let s = with_claim(ship("s", "small"), "data");
    assert_eq!(
        schedule(&s, &mut st),
        Err(ScheduleError::VolumeNotFound {
            claim: "data".into(),
            pv: "pv-gone".into()
        })
    );
    let mut deleting = claim("data", &["ReadWriteOnce"], None, None);
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
    );
    let mut st = zones_state().with_storage([Arc::new(deleting)], [], []);
    assert_eq!(
        schedule(&s, &mut st),
        Err(ScheduleError::ClaimDeleting("data".into()))
    );
}

#[test]
fn storage_fit_unbound_claim_needs_a_volume_or_provisioner() {
    let s = with_claim(ship("s", "small"), "data");
    // No class, no volume: unbindable everywhere.
    let mut st = zones_state().with_storage(
        [Arc::new(claim("data", &["ReadWriteOnce"], None, None))],
        [],
        [],
    );
    assert_eq!(
        schedule(&s, &mut st),
        Err(ScheduleError::NoFit(
            "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."
                .into()
        ))
    );
    // An available static volume in z1 (too small ones, wrong mode ones and bound ones do not
    // count).
    let mut st = zones_state().with_storage(
        [Arc::new(claim("data", &["ReadWriteOnce"], None, None))],
        [
            Arc::new(volume(
                "small",
                Some("z2"),
                &["ReadWriteOnce"],
                "1Gi",
                "Available",
            )),
            Arc::new(volume(
                "rox",
                Some("z2"),
                &["ReadOnlyMany"],
                "10Gi",
                "Available",
            )),
            Arc::new(volume(
                "taken",
                Some("z2"),
                &["ReadWriteOnce"],
                "10Gi",
                "Bound",
            )),
            Arc::new(volume(
                "ok",
                Some("z1"),
                &["ReadWriteOnce"],
                "20Gi",
                "Available",
            )),
        ],
        [],
    );
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("a".to_string()));
    // A volume reserved for another claim does not count.
    let mut reserved = volume("ok", Some("z1"), &["ReadWriteOnce"], "20Gi", "Available");
    if let Some(spec) = reserved.spec.as_mut() {
        spec.claim_ref = Some(ObjectReference {
            namespace: Some("default".into()),
            name: Some("other".into()),
            ..ObjectReference::default()
        });
    }
    let mut st = zones_state().with_storage(
        [Arc::new(claim("data", &["ReadWriteOnce"], None, None))],
        [Arc::new(reserved)],
        [],
    );
    assert!(schedule(&s, &mut st).is_err());
    // Dynamic provisioning restricted to z2 by allowedTopologies.
    let mut sc = StorageClass::default();
    sc.metadata.name = Some("fast".into());
    sc.provisioner = "csi.example.com".into();
    sc.allowed_topologies = Some(vec![TopologySelectorTerm {
        match_label_expressions: Some(vec![
            k8s_openapi::api::core::v1::TopologySelectorLabelRequirement {
                key: "zone".into(),
                values: vec!["z2".into()],
            },
        ]),
    }]);
    let mut st = zones_state().with_storage(
        [Arc::new(claim(
            "data",
            &["ReadWriteOnce"],
            Some("fast"),
            None,
        ))],
        [],
        [Arc::new(sc)],
    );
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b".to_string()));
}

#[test]
fn storage_fit_read_write_once_in_use_elsewhere() {
    let claims = || {
        [
            Arc::new(claim("rwo", &["ReadWriteOnce"], None, Some("pv-rwo"))),
            Arc::new(claim("rwx", &["ReadWriteMany"], None, Some("pv-rwx"))),
            Arc::new(claim("rwop", &["ReadWriteOncePod"], None, Some("pv-rwop"))),
        ]
    };
    let volumes = || {
        [
            Arc::new(volume("pv-rwo", None, &["ReadWriteOnce"], "10Gi", "Bound")),
            Arc::new(volume("pv-rwx", None, &["ReadWriteMany"], "10Gi", "Bound")),
            Arc::new(volume(
                "pv-rwop",
                None,
                &["ReadWriteOncePod"],
                "10Gi",
                "Bound",
            )),
        ]
    };
    let mut st = zones_state().with_storage(claims(), volumes(), []);
    st.place(&Arc::new(with_claim(ship("user", "small"), "rwo")), "a");
    st.place(&Arc::new(with_claim(ship("user2", "small"), "rwx")), "a");
    st.place(&Arc::new(with_claim(ship("user3", "small"), "rwop")), "a");
    // RWO: only the node already using it.
    for _ in 0..10 {
        let s = with_claim(ship("s", "small"), "rwo");
        assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("a".to_string()));
    }
    // RWX: anywhere (the emptier node wins).
    let s = with_claim(ship("s", "small"), "rwx");
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b".to_string()));
    // RWOP: nowhere while another Ship uses it.
    let s = with_claim(ship("s", "small"), "rwop");
    assert_eq!(
        schedule(&s, &mut st),
        Err(ScheduleError::NoFit(
            "0/2 nodes are available: 2 node(s) had a ReadWriteOnce volume in use by another Ship."
                .into()
        ))
    );
}

// ---------------------------------------------------------------------------------------------
// Ship affinity, anti-affinity, topology spread.

fn sel(pairs: &[(&str, &str)]) -> K8sSelector {
    K8sSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn term(pairs: &[(&str, &str)], key: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(sel(pairs)),
        topology_key: key.into(),
        ..PodAffinityTerm::default()
    }
}

fn labelled_ship(name: &str, labels: &[(&str, &str)]) -> Ship {
    let mut s = ship(name, "small");
    s.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    s
}

fn three_zones() -> ClusterState {
    state(vec![
        labelled("a1", &[("zone", "z1")]),
        labelled("a2", &[("zone", "z1")]),
        labelled("b1", &[("zone", "z2")]),
        labelled("c1", &[("zone", "z3")]),
        labelled("x", &[]),
    ])
}

#[test]
fn required_affinity_follows_the_matching_ships_domain() {
    let mut st = three_zones();
    let mut s = labelled_ship("web", &[("app", "web")]);
    s.spec.affinity = Some(ShipAffinity {
        ship_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term(
                &[("app", "db")],
                "zone",
            )]),
            ..PodAffinity::default()
        }),
        ..ShipAffinity::default()
    });
    // No db anywhere and the Ship is no db: nowhere.
    assert!(
        matches!(schedule(&s, &mut st), Err(ScheduleError::NoFit(m)) if m.contains("didn't match Ship affinity rules"))
    );
    // A db in z1 (placed after the term's counts were built: kept current by place).
    st.place(&Arc::new(labelled_ship("db", &[("app", "db")])), "a2");
    for _ in 0..10 {
        let n = schedule(&s, &mut st).map(|d| d.node);
        assert!(matches!(n.as_deref(), Ok("a1") | Ok("a2")), "{n:?}");
    }
    // Other namespaces do not count unless the term names them.
    let mut other = labelled_ship("db2", &[("app", "db")]);
    other.metadata.namespace = Some("other".into());
    let mut st = three_zones();
    st.place(&Arc::new(other), "b1");
    assert!(schedule(&s, &mut st).is_err());
    if let Some(t) = s
        .spec
        .affinity
        .as_mut()
        .and_then(|a| a.ship_affinity.as_mut())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_mut()
        })
    {
        t[0].namespaces = Some(vec!["other".into()]);
    }
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b1".to_string()));
}

#[test]
fn required_affinity_first_of_a_group_goes_anywhere() {
    // Every node has a zone: a first Ship on a node without the key would strand the rest
    // (as in Kubernetes).
    let mut st = state(vec![
        labelled("a1", &[("zone", "z1")]),
        labelled("a2", &[("zone", "z1")]),
        labelled("b1", &[("zone", "z2")]),
        labelled("c1", &[("zone", "z3")]),
    ]);
    let mut s = labelled_ship("w1", &[("app", "web")]);
    s.spec.affinity = Some(ShipAffinity {
        ship_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term(
                &[("app", "web")],
                "zone",
            )]),
            ..PodAffinity::default()
        }),
        ..ShipAffinity::default()
    });
    let first = schedule(&s, &mut st).map(|d| d.node);
    assert!(first.is_ok());
    let first = first.unwrap_or_default();
    let zone = st.nodes[&first].label("zone").map(str::to_string);
    st.place(&Arc::new(s.clone()), &first);
    // The rest follow the first one's zone.
    for _ in 0..10 {
        let n = schedule(&s, &mut st).map(|d| d.node).unwrap_or_default();
        assert_eq!(st.nodes[&n].label("zone").map(str::to_string), zone);
    }
}

#[test]
fn required_anti_affinity_both_ways() {
    let mut st = three_zones();
    let mut s = labelled_ship("r", &[("app", "redis")]);
    s.spec.affinity = Some(ShipAffinity {
        ship_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term(
                &[("app", "redis")],
                "zone",
            )]),
            ..PodAntiAffinity::default()
        }),
        ..ShipAffinity::default()
    });
    // One per zone; node x (no zone label) is its own non-domain and always allowed.
    let mut zones = BTreeSet::new();
    for i in 0..3 {
        let n = schedule(&s, &mut st).map(|d| d.node);
        let n = n.unwrap_or_else(|e| panic!("ship {i}: {e}"));
        if let Some(z) = st.nodes[&n].label("zone") {
            assert!(zones.insert(z.to_string()), "zone {z} twice");
        }
        st.place(&Arc::new(s.clone()), &n);
    }
    // Symmetry: a plain redis Ship without terms stays out of zones whose Ships forbid it.
    let mut st = three_zones();
    st.place(&Arc::new(s.clone()), "a1");
    st.place(&Arc::new(s.clone()), "b1");
    st.place(&Arc::new(s.clone()), "c1");
    let plain = labelled_ship("plain", &[("app", "redis")]);
    assert_eq!(
        schedule(&plain, &mut st).map(|d| d.node),
        Ok("x".to_string())
    );
    let unrelated = labelled_ship("u", &[("app", "web")]);
    assert!(schedule(&unrelated, &mut st).is_ok());
}

#[test]
fn preferred_affinity_and_anti_affinity_score() {
    let mut st = three_zones();
    st.place(&Arc::new(labelled_ship("db", &[("app", "db")])), "b1");
    let mut s = labelled_ship("w", &[("app", "web")]);
    s.spec.affinity = Some(ShipAffinity {
        ship_affinity: Some(PodAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term(&[("app", "db")], "zone"),
                },
            ]),
            ..PodAffinity::default()
        }),
        ..ShipAffinity::default()
    });
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b1".to_string()));
    s.spec.affinity = Some(ShipAffinity {
        ship_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term(&[("app", "db")], "zone"),
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..ShipAffinity::default()
    });
    for _ in 0..10 {
        assert_ne!(schedule(&s, &mut st).map(|d| d.node), Ok("b1".to_string()));
    }
}

fn spread(key: &str, max_skew: i32, when: &str) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        label_selector: Some(sel(&[("app", "web")])),
        max_skew,
        topology_key: key.into(),
        when_unsatisfiable: when.into(),
        ..TopologySpreadConstraint::default()
    }
}

#[test]
fn topology_spread_do_not_schedule_keeps_the_skew() {
    let mut st = three_zones();
    let mut s = labelled_ship("w", &[("app", "web")]);
    s.spec.topology_spread_constraints = vec![spread("zone", 1, "DoNotSchedule")];
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..9 {
        let n = schedule(&s, &mut st)
            .map(|d| d.node)
            .unwrap_or_else(|e| panic!("ship {i}: {e}"));
        let z = st.nodes[&n].label("zone").map(str::to_string);
        // Nodes without the key are never used.
        let z = z.unwrap_or_else(|| panic!("placed on {n} without a zone"));
        *per_zone.entry(z).or_default() += 1;
        st.place(&Arc::new(s.clone()), &n);
        let max = per_zone.values().max().copied().unwrap_or(0);
        let min = if per_zone.len() < 3 {
            0
        } else {
            per_zone.values().min().copied().unwrap_or(0)
        };
        assert!(max - min <= 1, "{per_zone:?}");
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
    // Restricted by a nodeSelector to z1 only: z1 is the only eligible domain, so it stays
    // schedulable there.
    let mut pinned = s.clone();
    pinned.spec.node_selector = [("zone".to_string(), "z1".to_string())].into();
    assert!(schedule(&pinned, &mut st).is_ok());
    assert_eq!(
        Unfit::TopologySpreadLabel.to_string(),
        "node(s) didn't match Ship topology spread constraints (missing required label)"
    );
}

#[test]
fn topology_spread_do_not_schedule_refuses_when_skew_would_break() {
    let mut st = state(vec![
        labelled("a1", &[("zone", "z1")]),
        labelled("b1", &[("zone", "z2")]),
    ]);
    let mut s = labelled_ship("w", &[("app", "web")]);
    s.spec.topology_spread_constraints = vec![spread("zone", 1, "DoNotSchedule")];
    s.spec.node_selector = [("zone".to_string(), "z1".to_string())].into();
    // z2 is not eligible for this Ship (node affinity honoured), so z1 alone is the domain set.
    assert!(schedule(&s, &mut st).is_ok());
    // Without the selector, z1 holding one more than z2 blocks z1 and only b1 fits.
    s.spec.node_selector.clear();
    st.place(&Arc::new(s.clone()), "a1");
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b1".to_string()));
    // Cordon b1: z1 would reach skew 2.
    st.nodes.insert(
        "b1".into(),
        NodeInfo::new(Arc::new({
            let mut n = labelled("b1", &[("zone", "z2")]);
            if let Some(spec) = n.spec.as_mut() {
                spec.unschedulable = Some(true);
            }
            n
        })),
    );
    assert_eq!(
        schedule(&s, &mut st),
        Err(ScheduleError::NoFit(
            "0/2 nodes are available: 1 node(s) didn't match Ship topology spread constraints, 1 node(s) were unschedulable."
                .into()
        ))
    );
}

#[test]
fn topology_spread_schedule_anyway_prefers_emptier_domains() {
    let mut st = three_zones();
    let web = Arc::new(labelled_ship("w0", &[("app", "web")]));
    st.place(&web, "a1");
    st.place(&web, "b1");
    let mut s = labelled_ship("w", &[("app", "web")]);
    s.spec.topology_spread_constraints = vec![spread("zone", 1, "ScheduleAnyway")];
    // z3 is the only zone without a web Ship (node x has no zone and scores lowest).
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("c1".to_string()));
}

// ---------------------------------------------------------------------------------------------
// ImageLocality, sampling, node facts.

#[test]
fn image_locality_prefers_nodes_with_the_image() {
    let image = "ghcr.io/x/ubuntu:24.04";
    let with_image = |name: &str| {
        let mut n = node(name, "8", "16Gi");
        if let Some(st) = n.status.as_mut() {
            st.images = vec![ContainerImage {
                names: Some(vec![image.into()]),
                size_bytes: Some(2 * 1024 * 1024 * 1024),
            }];
        }
        n
    };
    let mut st = state(vec![node("a", "8", "16Gi"), with_image("b")]);
    assert_eq!(st.image_nodes.get(image), Some(&1));
    let mut s = ship("s", "small");
    s.spec.image = image.into();
    assert_eq!(schedule(&s, &mut st).map(|d| d.node), Ok("b".to_string()));
    let b = &st.nodes["b"];
    let one = score_image_locality(image, b, 1, 2);
    let all = score_image_locality(image, b, 2, 2);
    assert!(one > 0.0 && all > one && all <= 100.0, "{one} {all}");
    assert_eq!(score_image_locality("other", b, 1, 2), 0.0);
}

#[test]
fn sampling_looks_at_part_of_a_large_cluster_and_rotates() {
    assert_eq!(nodes_to_find(50), 0);
    assert_eq!(nodes_to_find(1000), 420);
    assert_eq!(nodes_to_find(5000), 500);
    assert_eq!(nodes_to_find(200), 100);
    let nodes: Vec<Node> = (0..300)
        .map(|i| node(&format!("n{i:03}"), "4", "8Gi"))
        .collect();
    let mut st = state(nodes);
    st.feasible_limit = nodes_to_find(300);
    let d = schedule(&ship("s", "small"), &mut st);
    assert_eq!(d.as_ref().map(|d| d.feasible), Ok(nodes_to_find(300)));
    // Placing many Ships covers every node: the start rotates.
    let mut used = BTreeSet::new();
    for i in 0..600 {
        let s = Arc::new(ship(&format!("s{i}"), "small"));
        let n = schedule(&s, &mut st).map(|d| d.node).unwrap_or_default();
        st.place(&s, &n);
        used.insert(n);
    }
    assert_eq!(used.len(), 300);
}

#[test]
fn node_facts_are_read_once() {
    let mut n = node("a", "4", "8Gi");
    if let Some(st) = n.status.as_mut() {
        st.allocatable.insert("ships".into(), Quantity("3".into()));
    }
    let i = info(n);
    assert_eq!(i.max_ships(), Some(3));
    assert_eq!(i.allocatable().cpu_milli, 4000.0);
    assert_eq!(i.allocatable().memory, 8.0 * GI);
}
