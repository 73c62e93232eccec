//! The scheduler (crate `tugboat-controllers`) against a running `tugboatd`, in-process and
//! behind Lease leader election:
//!
//! - Ships bind only to nodes that fit (resources, Ready, taints);
//! - a Ship that fits nowhere stays unbound with a `FailedScheduling` Event naming the reason,
//!   and binds once a fitting Node appears;
//! - with two schedulers campaigning for the same Lease, exactly one is active and every Ship
//!   is bound exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tugboat_api::kinds::core::{Event, Node, Ship, ShipClass};
use tugboat_controllers::leader::{LeaderElectionConfig, LeaderElector};
use tugboat_controllers::scheduler::{Scheduler, SchedulerConfig};
use tugboat_testsuite::kube::{admin_client, eventually, install_crypto, must, start_with_api};
use tugboat_testsuite::test_runtime;

const IMAGE: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";
const DEADLINE: Duration = Duration::from_secs(60);

/// Creates a Node and sets its status (allocatable, Ready) through `/status`.
async fn create_node(client: &Client, name: &str, cpu: &str, memory: &str, taint: Option<&str>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: taint.map(|t| {
                vec![Taint {
                    key: t.into(),
                    value: Some("true".into()),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                }]
            }),
            ..NodeSpec::default()
        }),
        ..Node::default()
    };
    must(
        "create node",
        nodes.create(&PostParams::default(), &node).await,
    );
    let alloc: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity(memory.into())),
    ]
    .into();
    let ready = NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("AgentReady".into()),
        ..NodeCondition::default()
    };
    let status =
        json!({"status": {"capacity": alloc, "allocatable": alloc, "conditions": [ready]}});
    must(
        "node status",
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await,
    );
}

async fn create_ship_class(client: &Client, name: &str, cores: i32, memory: &str) {
    let api: Api<ShipClass> = Api::all(client.clone());
    let mut c = ShipClass::default();
    c.metadata.name = Some(name.into());
    c.spec.cpu.cores = cores;
    c.spec.memory.size = Quantity(memory.into());
    must(
        "create shipclass",
        api.create(&PostParams::default(), &c).await,
    );
}

async fn create_ship(client: &Client, ns: &str, name: &str, class: &str) {
    let api: Api<Ship> = Api::namespaced(client.clone(), ns);
    let mut s = Ship::default();
    s.metadata.name = Some(name.into());
    s.spec.image = IMAGE.into();
    s.spec.ship_class = class.into();
    must("create ship", api.create(&PostParams::default(), &s).await);
}

fn node_of(s: &Ship) -> Option<String> {
    s.spec.node_name.clone().filter(|n| !n.is_empty())
}

/// Starts leader election plus a scheduler for `identity`.
fn start_scheduler(client: &Client, identity: &str) -> tugboat_controllers::leader::LeaderHandle {
    let elector = LeaderElector::new(
        client.clone(),
        LeaderElectionConfig::new("tugboat-scheduler", identity),
    );
    let handle = elector.spawn();
    let scheduler = Scheduler::new(
        client.clone(),
        SchedulerConfig {
            instance: identity.into(),
            ..SchedulerConfig::default()
        },
    );
    tokio::spawn(scheduler.run(handle.is_leader.clone()));
    handle
}

#[test]
fn ships_bind_to_fitting_nodes_and_unschedulable_ones_get_an_event() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        create_node(&client, "node-a", "4", "8Gi", None).await;
        create_node(&client, "node-b", "4", "8Gi", None).await;
        create_node(&client, "node-tainted", "64", "512Gi", Some("dedicated")).await;
        create_ship_class(&client, "small", 1, "2Gi").await;
        create_ship_class(&client, "huge", 2, "100Gi").await;
        for i in 0..6 {
            create_ship(&client, "default", &format!("web-{i}"), "small").await;
        }
        create_ship(&client, "default", "whale", "huge").await;

        let a = start_scheduler(&client, "sched-a");
        let b = start_scheduler(&client, "sched-b");
        let ships: Api<Ship> = Api::namespaced(client.clone(), "default");

        // The six small Ships bind to the untainted nodes, within their resources.
        let bound = eventually("small ships bound", DEADLINE, || async {
            let list = ships
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
            for s in list.items.iter().filter(|s| s.spec.ship_class == "small") {
                let n = node_of(s).ok_or_else(|| format!("{:?} unbound", s.metadata.name))?;
                *per_node.entry(n).or_default() += 1;
            }
            Ok(per_node)
        })
        .await;
        assert!(!bound.contains_key("node-tainted"), "{bound:?}");
        assert!(bound.values().all(|n| *n <= 4), "over capacity: {bound:?}");
        assert_eq!(bound.values().sum::<usize>(), 6);

        // The whale fits nowhere: an Event explains it.
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let message = eventually("FailedScheduling event", DEADLINE, || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some("whale")
                        && e.reason.as_deref() == Some("FailedScheduling")
                })
                .and_then(|e| e.message.clone())
                .ok_or_else(|| format!("{} events, none for whale", list.items.len()))
        })
        .await;
        assert!(message.starts_with("0/3 nodes are available"), "{message}");
        assert!(message.contains("2 Insufficient memory"), "{message}");
        assert!(
            message.contains("untolerated taint {dedicated: true}"),
            "{message}"
        );
        let whale = must("get whale", ships.get("whale").await);
        assert_eq!(node_of(&whale), None);

        // A big enough node appears: the whale binds there.
        create_node(&client, "node-big", "16", "256Gi", None).await;
        let whale_node = eventually("whale bound", DEADLINE, || async {
            let s = ships.get("whale").await.map_err(|e| e.to_string())?;
            node_of(&s).ok_or_else(|| "unbound".to_string())
        })
        .await;
        assert_eq!(whale_node, "node-big");
        // Binding and the Scheduled phase are two writes (spec, then /status): wait for both.
        eventually("whale Scheduled", DEADLINE, || async {
            let s = ships.get("whale").await.map_err(|e| e.to_string())?;
            match s.status.and_then(|st| st.phase) {
                Some(p) if p == "Scheduled" => Ok(()),
                other => Err(format!("phase {other:?}")),
            }
        })
        .await;

        // Exactly one scheduler is the leader.
        let leaders = [*a.is_leader.borrow(), *b.is_leader.borrow()];
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
        a.stop().await;
        b.stop().await;
    });
}

#[test]
fn two_schedulers_never_double_bind() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        for n in ["n1", "n2", "n3"] {
            create_node(&client, n, "64", "256Gi", None).await;
        }
        create_ship_class(&client, "small", 1, "1Gi").await;
        let a = start_scheduler(&client, "sched-1");
        let b = start_scheduler(&client, "sched-2");
        let ships: Api<Ship> = Api::namespaced(client.clone(), "default");

        // Record every nodeName each Ship ever had, through a watch.
        let seen =
            std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Vec<String>>::new()));
        let watcher_task = {
            let seen = seen.clone();
            let ships = ships.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                let stream =
                    kube::runtime::watcher(ships, kube::runtime::watcher::Config::default());
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    let objs = match ev {
                        Ok(kube::runtime::watcher::Event::Apply(s))
                        | Ok(kube::runtime::watcher::Event::InitApply(s)) => vec![s],
                        _ => continue,
                    };
                    for s in objs {
                        if let (Some(name), Some(n)) = (s.metadata.name.clone(), node_of(&s)) {
                            if let Ok(mut m) = seen.lock() {
                                let v = m.entry(name).or_default();
                                if v.last() != Some(&n) {
                                    v.push(n);
                                }
                            }
                        }
                    }
                }
            })
        };

        for i in 0..30 {
            create_ship(&client, "default", &format!("s-{i}"), "small").await;
        }
        eventually("all ships bound", DEADLINE, || async {
            let list = ships
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let unbound = list.items.iter().filter(|s| node_of(s).is_none()).count();
            if unbound == 0 && list.items.len() == 30 {
                Ok(())
            } else {
                Err(format!("{unbound} of {} unbound", list.items.len()))
            }
        })
        .await;
        let leaders = [*a.is_leader.borrow(), *b.is_leader.borrow()];
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");

        // Hand-over: stopping the leader lets the other take over, and it schedules.
        let (leader, standby) = if leaders[0] { (a, b) } else { (b, a) };
        leader.stop().await;
        let mut standby_leading = standby.is_leader.clone();
        eventually("standby takes over", DEADLINE, || {
            let v = *standby_leading.borrow_and_update();
            async move {
                if v {
                    Ok(())
                } else {
                    Err("not leading".to_string())
                }
            }
        })
        .await;
        create_ship(&client, "default", "after-handover", "small").await;
        eventually("ship bound after hand-over", DEADLINE, || async {
            let s = ships
                .get("after-handover")
                .await
                .map_err(|e| e.to_string())?;
            node_of(&s).map(|_| ()).ok_or_else(|| "unbound".to_string())
        })
        .await;
        standby.stop().await;

        // No Ship ever changed node: each was bound exactly once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        watcher_task.abort();
        let seen = seen.lock().map(|m| m.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 31, "{seen:?}");
        for (ship, nodes) in &seen {
            assert_eq!(nodes.len(), 1, "{ship} bound to {nodes:?}");
        }
    });
}
