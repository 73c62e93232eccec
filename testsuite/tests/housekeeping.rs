//! The housekeeping controllers (crate `tugboat-controllers`) against a running `tugboatd`,
//! in-process and behind Lease leader election:
//!
//! - namespaces: a new namespace gets a `default` ServiceAccount and a token Secret whose
//!   token authenticates as that account; deleting the account gets both back (new token);
//! - network classes: `status.readyNodes` of a NetworkClass and a ClusterNetworkClass follow
//!   Node status patches adding and removing CNI plugins;
//! - garbage collection: a Ship whose owner uid is gone is deleted, one with a live owner
//!   stays, one with a live and a dead owner loses the dead reference;
//! - node lifecycle: a Node whose Lease stops being renewed turns `Ready=Unknown` with the
//!   unreachable taints, its Ships turn Failed after the eviction timeout, a force-deleted
//!   Ship loses the agent finalizer, and a renewed Lease clears the condition and the taints.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tugboat_api::kinds::apps::ReplicaSet;
use tugboat_api::kinds::core::{ClusterNetworkClass, NetworkClass, Node, Ship};
use tugboat_api::kinds::Selector;
use tugboat_controllers::gc::{GarbageCollector, GcConfig};
use tugboat_controllers::leader::{LeaderElectionConfig, LeaderElector, LeaderHandle};
use tugboat_controllers::namespace::{NamespaceConfig, NamespaceController};
use tugboat_controllers::networkclass::{NetworkClassConfig, NetworkClassStatusController};
use tugboat_controllers::nodelifecycle::{NodeLifecycleConfig, NodeLifecycleController};
use tugboat_testsuite::kube::{
    admin_client, eventually, install_crypto, must, raw_request, start_with_api,
};
use tugboat_testsuite::test_runtime;

const IMAGE: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";
const DEADLINE: Duration = Duration::from_secs(60);

fn elect(client: &Client, identity: &str) -> LeaderHandle {
    LeaderElector::new(
        client.clone(),
        LeaderElectionConfig::new("tugboat-controller-manager", identity),
    )
    .spawn()
}

fn ship(name: &str, node: Option<&str>) -> Ship {
    let mut s = Ship::default();
    s.metadata.name = Some(name.into());
    s.spec.image = IMAGE.into();
    s.spec.ship_class = "small".into();
    s.spec.node_name = node.map(str::to_string);
    s
}

fn owner(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

fn replicaset(name: &str) -> ReplicaSet {
    let labels: BTreeMap<String, String> = [("app".to_string(), name.to_string())].into();
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some(name.into());
    rs.spec.replicas = Some(0);
    rs.spec.selector = Selector::Map(labels.clone());
    rs.spec.ship_template.metadata.labels = Some(labels);
    rs.spec.ship_template.spec.image = IMAGE.into();
    rs.spec.ship_template.spec.ship_class = "small".into();
    rs
}

/// The decoded token of `namespace`'s default token Secret, with the account's uid.
async fn default_token(client: &Client, namespace: &str) -> (String, String) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("default serviceaccount and token in {namespace}"),
        DEADLINE,
        || async {
            let sa = accounts
                .get_opt("default")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no serviceaccount yet")?;
            let uid = sa.metadata.uid.clone().unwrap_or_default();
            let s = secrets
                .get_opt("default-token")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no token secret yet")?;
            let ann = s.metadata.annotations.clone().unwrap_or_default();
            if s.type_.as_deref() != Some("kubernetes.io/service-account-token")
                || ann
                    .get("kubernetes.io/service-account.name")
                    .map(String::as_str)
                    != Some("default")
                || ann.get("kubernetes.io/service-account.uid") != Some(&uid)
            {
                return Err(format!("secret not (yet) for account {uid}: {s:?}"));
            }
            let listed = sa
                .secrets
                .iter()
                .flatten()
                .any(|r| r.name.as_deref() == Some("default-token"));
            if !listed {
                return Err("token not listed on the serviceaccount yet".into());
            }
            let token = s
                .data
                .as_ref()
                .and_then(|d| d.get("token"))
                .map(|t| String::from_utf8_lossy(&t.0).into_owned())
                .filter(|t| !t.is_empty())
                .ok_or("secret has no token")?;
            Ok((token, uid))
        },
    )
    .await
}

/// Who the apiserver says `token` is (SelfSubjectReview).
async fn whoami(kubeconfig: std::path::PathBuf, token: String) -> (u16, String) {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let resp = tokio::task::spawn_blocking(move || {
        raw_request(
            &kubeconfig,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(&token),
            Some(("application/json", &bytes)),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("whoami task: {e}"))
    .unwrap_or_else(|e| panic!("whoami request: {e}"));
    let user = resp
        .json()
        .pointer("/status/userInfo/username")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    (resp.status, user)
}

fn ready_nodes_of(status: Option<&tugboat_api::kinds::core::NetworkClassStatus>) -> Vec<String> {
    status.map(|s| s.ready_nodes.clone()).unwrap_or_default()
}

async fn patch_node_plugins(nodes: &Api<Node>, name: &str, plugins: serde_json::Value) {
    must(
        "patch node status",
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady"}],
                    "cniPlugins": plugins,
                }})),
            )
            .await,
    );
}

#[test]
fn namespaces_networks_and_garbage_collection() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        let handle = elect(&client, "cm-a");
        tokio::spawn(
            NamespaceController::new(client.clone(), NamespaceConfig::default())
                .run(handle.is_leader.clone()),
        );
        tokio::spawn(
            NetworkClassStatusController::new(client.clone(), NetworkClassConfig::default())
                .run(handle.is_leader.clone()),
        );
        let gc_cfg = GcConfig {
            settle: Duration::from_millis(200),
            ..GcConfig::default()
        };
        tokio::spawn(GarbageCollector::new(client.clone(), gc_cfg).run(handle.is_leader.clone()));

        // --- Namespaces: bootstrap and new namespaces get a default account and token.
        default_token(&client, "default").await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some("team-a".into());
        must(
            "create namespace",
            namespaces.create(&PostParams::default(), &ns).await,
        );
        let (token, first_uid) = default_token(&client, "team-a").await;
        let (code, user) = whoami(node.kubeconfig_path(), token.clone()).await;
        assert_eq!(code, 201, "selfsubjectreview with the token");
        assert_eq!(user, "system:serviceaccount:team-a:default");

        // Deleting the account brings a new one, with a new token that works.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
        must(
            "delete serviceaccount",
            accounts.delete("default", &DeleteParams::default()).await,
        );
        let (new_token, new_uid) = eventually("a new default account", DEADLINE, || async {
            let (t, uid) = default_token(&client, "team-a").await;
            if uid == first_uid {
                Err("still the first account".to_string())
            } else {
                Ok((t, uid))
            }
        })
        .await;
        assert_ne!(new_uid, first_uid);
        let (code, user) = whoami(node.kubeconfig_path(), new_token).await;
        assert_eq!(
            (code, user.as_str()),
            (201, "system:serviceaccount:team-a:default")
        );
        let (code, _) = whoami(node.kubeconfig_path(), token).await;
        assert_eq!(code, 401, "the first account's token must no longer work");

        // A deleted namespace goes away entirely (its account and token with it).
        must(
            "delete namespace",
            namespaces.delete("team-a", &DeleteParams::default()).await,
        );
        eventually("namespace team-a gone", DEADLINE, || async {
            match namespaces.get_opt("team-a").await {
                Ok(None) => Ok(()),
                Ok(Some(n)) => Err(format!("still there: {:?}", n.status)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;

        // --- Network classes follow the Nodes' CNI plugins.
        let nodes: Api<Node> = Api::all(client.clone());
        let mut n = Node::default();
        n.metadata.name = Some("net-node".into());
        must(
            "create node",
            nodes.create(&PostParams::default(), &n).await,
        );
        patch_node_plugins(
            &nodes,
            "net-node",
            json!([{"name": "bridge", "ready": true}]),
        )
        .await;
        let classes: Api<NetworkClass> = Api::namespaced(client.clone(), "default");
        let cluster_classes: Api<ClusterNetworkClass> = Api::all(client.clone());
        let mut nc = NetworkClass::default();
        nc.metadata.name = Some("lan".into());
        nc.spec.cni_plugin = "bridge".into();
        must(
            "create networkclass",
            classes.create(&PostParams::default(), &nc).await,
        );
        let mut cnc = ClusterNetworkClass::default();
        cnc.metadata.name = Some("overlay".into());
        cnc.spec.cni_plugin = "flannel".into();
        cnc.spec.config = Some(json!({"plugins": [{"type": "flannel"}, {"type": "portmap"}]}));
        must(
            "create clusternetworkclass",
            cluster_classes.create(&PostParams::default(), &cnc).await,
        );
        let expect = |lan: Vec<&'static str>, overlay: Vec<&'static str>| {
            let classes = classes.clone();
            let cluster_classes = cluster_classes.clone();
            async move {
                eventually(
                    &format!("readyNodes lan={lan:?} overlay={overlay:?}"),
                    DEADLINE,
                    || async {
                        let a = classes.get("lan").await.map_err(|e| e.to_string())?;
                        let b = cluster_classes
                            .get("overlay")
                            .await
                            .map_err(|e| e.to_string())?;
                        let got = (
                            ready_nodes_of(a.status.as_ref()),
                            ready_nodes_of(b.status.as_ref()),
                        );
                        let ready_cond =
                            |s: Option<&tugboat_api::kinds::core::NetworkClassStatus>| {
                                s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                                    .map(|c| c.status.clone())
                            };
                        let want_cond = |v: &Vec<&str>| {
                            Some(if v.is_empty() { "False" } else { "True" }.to_string())
                        };
                        if got.0 == lan
                            && got.1 == overlay
                            && ready_cond(a.status.as_ref()) == want_cond(&lan)
                            && ready_cond(b.status.as_ref()) == want_cond(&overlay)
                            && a.status.as_ref().and_then(|s| s.observed_generation)
                                == a.metadata.generation
                        {
                            Ok(())
                        } else {
                            Err(format!("{:?} / {:?}", a.status, b.status))
                        }
                    },
                )
                .await
            }
        };
        expect(vec!["net-node"], vec![]).await;
        patch_node_plugins(
            &nodes,
            "net-node",
            json!([{"name": "bridge", "ready": true}, {"name": "flannel", "ready": true},
                   {"name": "portmap", "ready": true}]),
        )
        .await;
        expect(vec!["net-node"], vec!["net-node"]).await;
        patch_node_plugins(
            &nodes,
            "net-node",
            json!([{"name": "flannel", "ready": true}, {"name": "portmap", "ready": false}]),
        )
        .await;
        expect(vec![], vec![]).await;

        // --- Garbage collection of Ships whose owner is gone.
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let ships: Api<Ship> = Api::namespaced(client.clone(), "default");
        let dead = must(
            "create rs",
            sets.create(&PostParams::default(), &replicaset("gone"))
                .await,
        );
        let live = must(
            "create rs",
            sets.create(&PostParams::default(), &replicaset("live"))
                .await,
        );
        must(
            "delete rs",
            sets.delete("gone", &DeleteParams::background()).await,
        );
        eventually("replicaset gone deleted", DEADLINE, || async {
            match sets.get_opt("gone").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // Created after their owner went, as a racing controller would.
        let mut orphan = ship("orphan", None);
        orphan.metadata.owner_references = Some(vec![owner(&dead)]);
        let mut kept = ship("kept", None);
        kept.metadata.owner_references = Some(vec![owner(&live)]);
        let mut half = ship("half", None);
        half.metadata.owner_references = Some(vec![owner(&dead), owner(&live)]);
        for s in [&orphan, &kept, &half] {
            must("create ship", ships.create(&PostParams::default(), s).await);
        }
        eventually("orphan collected", DEADLINE, || async {
            match ships.get_opt("orphan").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let live_uid = live.metadata.uid.clone().unwrap_or_default();
        eventually("dangling reference removed", DEADLINE, || async {
            let h = ships.get("half").await.map_err(|e| e.to_string())?;
            let uids: Vec<String> = h
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|r| r.uid.clone())
                .collect();
            if uids == vec![live_uid.clone()] {
                Ok(())
            } else {
                Err(format!("owners {uids:?}"))
            }
        })
        .await;
        let k = must("get kept", ships.get("kept").await);
        assert!(
            k.metadata.deletion_timestamp.is_none(),
            "a ship with a live owner was deleted"
        );

        handle.stop().await;
    });
}

fn lease(node: &str) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(node.into());
    l.spec = Some(LeaseSpec {
        holder_identity: Some(node.into()),
        lease_duration_seconds: Some(3),
        renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        ..LeaseSpec::default()
    });
    l
}

/// Renews `node`'s Lease every 300 ms, as an agent would.
fn spawn_heartbeat(leases: Api<Lease>, node: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let patch =
                json!({"spec": {"renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())}});
            if let Err(e) = leases
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                eprintln!("heartbeat: {e}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

fn ready_of(n: &Node) -> Option<(String, Option<String>)> {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn unreachable_taints(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key == "node.kubernetes.io/unreachable")
        .map(|t| t.effect)
        .collect()
}

#[test]
fn node_lifecycle_follows_the_lease() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        let handle = elect(&client, "cm-b");
        let cfg = NodeLifecycleConfig {
            grace: Duration::from_secs(5),
            ship_eviction_timeout: Duration::from_secs(3),
            monitor_period: Duration::from_millis(300),
            ..NodeLifecycleConfig::default()
        };
        tokio::spawn(
            NodeLifecycleController::new(client.clone(), cfg).run(handle.is_leader.clone()),
        );

        const NODE: &str = "worker-1";
        let nodes: Api<Node> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), "tugboat-node-lease");
        let ships: Api<Ship> = Api::namespaced(client.clone(), "default");
        let mut n = Node::default();
        n.metadata.name = Some(NODE.into());
        must(
            "create node",
            nodes.create(&PostParams::default(), &n).await,
        );
        must(
            "node ready",
            nodes
                .patch_status(
                    NODE,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"conditions": [
                        {"type": "Ready", "status": "True", "reason": "AgentReady"},
                        {"type": "MemoryPressure", "status": "False"},
                    ]}})),
                )
                .await,
        );
        must(
            "create lease",
            leases.create(&PostParams::default(), &lease(NODE)).await,
        );
        let heartbeat = spawn_heartbeat(leases.clone(), NODE);

        for name in ["vm-running", "vm-doomed"] {
            let mut s = ship(name, Some(NODE));
            if name == "vm-doomed" {
                s.metadata.finalizers = Some(vec!["tugboat.io/agent".into()]);
                s.metadata.annotations = Some(
                    [(
                        "tugboat.io/force-delete-local-state".to_string(),
                        "true".to_string(),
                    )]
                    .into(),
                );
            }
            must(
                "create ship",
                ships.create(&PostParams::default(), &s).await,
            );
            must(
                "ship running",
                ships
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"phase": "Running"}})),
                    )
                    .await,
            );
        }
        // While the Lease is renewed, nothing happens (several grace periods).
        tokio::time::sleep(Duration::from_secs(7)).await;
        let fresh = must("get node", nodes.get(NODE).await);
        assert_eq!(
            ready_of(&fresh).map(|r| r.0),
            Some("True".to_string()),
            "a node with a renewed lease was marked"
        );
        assert!(unreachable_taints(&fresh).is_empty());

        // The agent goes silent.
        heartbeat.abort();
        let _ = heartbeat.await;
        eventually("node Ready=Unknown and tainted", DEADLINE, || async {
            let n = nodes.get(NODE).await.map_err(|e| e.to_string())?;
            let mut taints = unreachable_taints(&n);
            taints.sort();
            if ready_of(&n) == Some(("Unknown".into(), Some("NodeStatusUnknown".into())))
                && taints == vec!["NoExecute".to_string(), "NoSchedule".to_string()]
            {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", n.status, n.spec))
            }
        })
        .await;
        let n = must("get node", nodes.get(NODE).await);
        let other_kept = n
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "MemoryPressure"));
        assert!(other_kept, "other node conditions must be kept");

        // A force-deleted Ship on the dead node loses the agent finalizer and goes.
        must(
            "delete doomed",
            ships.delete("vm-doomed", &DeleteParams::default()).await,
        );
        eventually("force-deleted ship gone", DEADLINE, || async {
            match ships.get_opt("vm-doomed").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;

        eventually(
            "ship failed after the eviction timeout",
            DEADLINE,
            || async {
                let s = ships.get("vm-running").await.map_err(|e| e.to_string())?;
                let st = s.status.clone().unwrap_or_default();
                if st.phase.as_deref() == Some("Failed") && st.reason.as_deref() == Some("NodeLost")
                {
                    Ok(())
                } else {
                    Err(format!("{st:?}"))
                }
            },
        )
        .await;

        // The agent is back: the condition and the taints go.
        let heartbeat = spawn_heartbeat(leases.clone(), NODE);
        eventually("node cleared", DEADLINE, || async {
            let n = nodes.get(NODE).await.map_err(|e| e.to_string())?;
            let ready = ready_of(&n).map(|r| r.0);
            if ready == Some("True".into()) && unreachable_taints(&n).is_empty() {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", n.status, n.spec))
            }
        })
        .await;
        // An agent status write (Ready=True, its reason) is left alone.
        must(
            "agent status",
            nodes
                .patch_status(
                    NODE,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"conditions": [
                        {"type": "Ready", "status": "True", "reason": "AgentReady"},
                    ]}})),
                )
                .await,
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let n = must("get node", nodes.get(NODE).await);
        assert_eq!(
            ready_of(&n),
            Some(("True".to_string(), Some("AgentReady".to_string())))
        );
        heartbeat.abort();
        handle.stop().await;
    });
}
