//! The ReplicaSet controller (crate `tugboat-controllers`) against a running `tugboatd`,
//! in-process and behind Lease leader election:
//!
//! - a ReplicaSet of 3 gets exactly 3 Ships owned by it; scaling to 5 and to 1 converges;
//! - a watch over the whole test counts every Ship the controller ever created: no
//!   over-creation while its own creates are in flight;
//! - `status` (replicas, readyReplicas from phase Running, observedGeneration) follows;
//! - an orphan Ship matching the selector is adopted and the count stays at `replicas`;
//! - deleting the ReplicaSet (background propagation) removes its Ships.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tugboat_api::kinds::apps::ReplicaSet;
use tugboat_api::kinds::core::Ship;
use tugboat_api::kinds::Selector;
use tugboat_controllers::leader::{LeaderElectionConfig, LeaderElector};
use tugboat_controllers::replicaset::{ReplicaSetConfig, ReplicaSetController};
use tugboat_testsuite::kube::{admin_client, eventually, install_crypto, must, start_with_api};
use tugboat_testsuite::test_runtime;

const IMAGE: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";
const DEADLINE: Duration = Duration::from_secs(60);
const NS: &str = "default";
const RS: &str = "web";

fn labels() -> BTreeMap<String, String> {
    [("app".to_string(), "web".to_string())].into()
}

fn replicaset(replicas: i32) -> ReplicaSet {
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some(RS.into());
    rs.metadata.namespace = Some(NS.into());
    rs.spec.replicas = Some(replicas);
    rs.spec.selector = Selector::Map(labels());
    rs.spec.ship_template.metadata.labels = Some(labels());
    rs.spec.ship_template.spec.image = IMAGE.into();
    rs.spec.ship_template.spec.ship_class = "small".into();
    rs
}

/// What the watch saw over the whole test.
#[derive(Default, Debug)]
struct Seen {
    /// Every Ship name the controller created (generateName prefix `web-`).
    created: BTreeSet<String>,
    /// Ships ever seen controlled by the ReplicaSet (by uid).
    ever_owned: BTreeSet<String>,
    /// Ships owned and not deleted, right now.
    live_owned: BTreeSet<String>,
    /// Most Ships owned at once.
    max_live_owned: usize,
}

fn owned_by(s: &Ship, uid: &str) -> bool {
    s.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

fn spawn_watch(
    ships: Api<Ship>,
    uid: String,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watcher(ships, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let (ship, deleted) = match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => (s, false),
                Ok(watcher::Event::Delete(s)) => (s, true),
                _ => continue,
            };
            let Some(name) = ship.metadata.name.clone() else {
                continue;
            };
            let Ok(mut seen) = seen.lock() else { return };
            if ship.metadata.generate_name.as_deref() == Some("web-") {
                seen.created.insert(name.clone());
            }
            let owned = owned_by(&ship, &uid);
            if owned {
                seen.ever_owned.insert(name.clone());
            }
            if owned && !deleted && ship.metadata.deletion_timestamp.is_none() {
                seen.live_owned.insert(name);
            } else {
                seen.live_owned.remove(&name);
            }
            seen.max_live_owned = seen.max_live_owned.max(seen.live_owned.len());
        }
    })
}

/// Waits until exactly `n` live Ships are owned by the ReplicaSet and its status says so.
async fn converge(
    ships: &Api<Ship>,
    sets: &Api<ReplicaSet>,
    uid: &str,
    n: usize,
    ready: i32,
) -> Vec<Ship> {
    eventually(&format!("{n} ships, {ready} ready"), DEADLINE, || async {
        let list = ships
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let owned: Vec<Ship> = list
            .items
            .into_iter()
            .filter(|s| owned_by(s, uid) && s.metadata.deletion_timestamp.is_none())
            .collect();
        let rs = sets.get(RS).await.map_err(|e| e.to_string())?;
        let status = rs.status.clone().unwrap_or_default();
        let want = i32::try_from(n).map_err(|e| e.to_string())?;
        if owned.len() == n
            && status.replicas == want
            && status.ready_replicas == Some(ready)
            && status.available_replicas == Some(ready)
            && status.fully_labeled_replicas == Some(want)
            && status.observed_generation == rs.metadata.generation
        {
            Ok(owned)
        } else {
            Err(format!(
                "{} owned; generation {:?}; status {status:?}",
                owned.len(),
                rs.metadata.generation
            ))
        }
    })
    .await
}

async fn scale(sets: &Api<ReplicaSet>, replicas: i32) {
    must(
        "scale",
        sets.patch(
            RS,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await,
    );
}

#[test]
fn replicaset_keeps_exactly_its_replicas() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        let elector = LeaderElector::new(
            client.clone(),
            LeaderElectionConfig::new("tugboat-controller-manager", "cm-a"),
        );
        let handle = elector.spawn();
        let controller = ReplicaSetController::new(client.clone(), ReplicaSetConfig::default());
        tokio::spawn(controller.run(handle.is_leader.clone()));

        let ships: Api<Ship> = Api::namespaced(client.clone(), NS);
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let rs = must(
            "create replicaset",
            sets.create(&PostParams::default(), &replicaset(3)).await,
        );
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        assert!(!uid.is_empty(), "created replicaset has no uid");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watch = spawn_watch(ships.clone(), uid.clone(), seen.clone());

        // 3 Ships, created from the template with an ownerReference.
        let owned = converge(&ships, &sets, &uid, 3, 0).await;
        for s in &owned {
            assert_eq!(s.metadata.labels.clone().unwrap_or_default(), labels());
            assert_eq!(s.spec.image, IMAGE);
            let r = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.uid == uid)
                .cloned()
                .unwrap_or_else(|| panic!("{:?} not owned", s.metadata.name));
            assert_eq!((r.kind.as_str(), r.name.as_str()), ("ReplicaSet", RS));
            assert_eq!(r.block_owner_deletion, Some(true));
        }

        // Running Ships count as ready.
        for s in &owned {
            let name = s.metadata.name.clone().unwrap_or_default();
            must(
                "mark running",
                ships
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"phase": "Running"}})),
                    )
                    .await,
            );
        }
        converge(&ships, &sets, &uid, 3, 3).await;
        let first_three: BTreeSet<String> = owned
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();

        // Scale up, then down: the new (not Running) Ships go first, so 1 Running one stays.
        scale(&sets, 5).await;
        converge(&ships, &sets, &uid, 5, 3).await;
        scale(&sets, 1).await;
        let left = converge(&ships, &sets, &uid, 1, 1).await;
        let survivor = left[0].metadata.name.clone().unwrap_or_default();
        assert!(
            first_three.contains(&survivor),
            "{survivor} was not one of the first three"
        );

        // An orphan matching the selector is adopted; the count stays at 1.
        let mut orphan = Ship::default();
        orphan.metadata.name = Some("orphan".into());
        orphan.metadata.labels = Some(labels());
        orphan.spec.image = IMAGE.into();
        orphan.spec.ship_class = "small".into();
        must(
            "create orphan",
            ships.create(&PostParams::default(), &orphan).await,
        );
        eventually("orphan adopted", DEADLINE, || async {
            let adopted = seen
                .lock()
                .map(|s| s.ever_owned.contains("orphan"))
                .unwrap_or(false);
            if adopted {
                Ok(())
            } else {
                Err("not adopted yet".to_string())
            }
        })
        .await;
        let left = converge(&ships, &sets, &uid, 1, 1).await;
        assert_eq!(left[0].metadata.name.as_deref(), Some(survivor.as_str()));

        // Over the whole test: 3 + 2 Ships created, never more than 5 owned at once.
        {
            let seen = seen.lock().map_err(|e| e.to_string());
            let seen = seen.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(seen.created.len(), 5, "{seen:?}");
            assert!(seen.max_live_owned <= 5, "{seen:?}");
        }

        // Deleting the ReplicaSet (background) removes its Ships.
        must(
            "delete replicaset",
            sets.delete(RS, &DeleteParams::background()).await,
        );
        eventually("ships garbage-collected", DEADLINE, || async {
            let list = ships
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            if list.items.is_empty() {
                Ok(())
            } else {
                Err(format!("{} ships left", list.items.len()))
            }
        })
        .await;
        watch.abort();
        handle.stop().await;
    });
}
