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
    let mut nd = ShipNeeds {
        runtime_class: Some(Arc::new(rc.clone())),
        ..ShipNeeds::default()
    };
    // No runtimeClass asked: any node.
    assert!(filter_runtime_class(&s, &nd, &n).is_ok());
    s.spec.runtime_class = Some("qemu-migrate".into());
    // Node without label: fits (no live migration needed).
    assert!(filter_runtime_class(&s, &nd, &n).is_ok());
    n.metadata.labels = Some([(RUNTIME_CLASS_LABEL.to_string(), "qemu".to_string())].into());
    assert_eq!(filter_runtime_class(&s, &nd, &n), Err(Unfit::RuntimeClass));
    // Live migration needed: an unlabelled node does not prove it.
    rc.spec.live_migration = Some(true);
    nd.runtime_class = Some(Arc::new(rc));
    n.metadata.labels = None;
    assert_eq!(filter_runtime_class(&s, &nd, &n), Err(Unfit::LiveMigration));
    n.metadata.labels =
        Some([(RUNTIME_CLASS_LABEL.to_string(), "qemu-migrate".to_string())].into());
    assert!(filter_runtime_class(&s, &nd, &n).is_ok());
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
    let d = schedule(&ship("s", "small"), &st);
    // Both a and b fit; a is emptier.
    assert_eq!(d.as_ref().map(|d| d.node.as_str()), Ok("a"));
    assert_eq!(d.map(|d| d.feasible), Ok(2));
    // Nothing fits "big" (64Gi): two nodes lack memory, the tainted one is tainted.
    let err = schedule(&ship("s", "big"), &st).map(|d| d.node);
    assert_eq!(
        err,
        Err(ScheduleError::NoFit(
            "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient memory, 1 node(s) had untolerated taint {dedicated: db}."
                .into()
        ))
    );
    assert_eq!(
        schedule(&ship("s", "missing"), &st),
        Err(ScheduleError::ShipClassNotFound("missing".into()))
    );
    // Placing Ships fills nodes up.
    st.place(&ship("x", "small"), "a");
    st.place(&ship("y", "small"), "a");
    assert_eq!(
        schedule(&ship("s", "small"), &st).map(|d| d.node),
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
    st.place(&owned, "a");
    let mut other = owned.clone();
    other.metadata.name = Some("o2".into());
    assert_eq!(schedule(&other, &st).map(|d| d.node), Ok("b".to_string()));
}
