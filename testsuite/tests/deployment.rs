//! The Deployment controller (crate `tugboat-controllers`, with the ReplicaSet controller)
//! against a running `tugboatd`, in-process behind Lease leader election, driven by the real
//! kubectl:
//!
//! - the seed's Deployment manifest (applied verbatim) gets 3 Running Ships through one
//!   ReplicaSet `<name>-<hash>`; `kubectl scale` to 5 and back to 3 converges;
//! - a rolling update to another image never has fewer Running Ships than
//!   `replicas - maxUnavailable` (a watch records the minimum over the whole rollout);
//!   `kubectl rollout status` exits 0 and `kubectl rollout history` lists both revisions;
//! - `kubectl rollout undo` brings the first image back (revision 3), `--to-revision=2` the
//!   second one;
//! - with the Recreate strategy no new Ship exists while an old one does;
//! - deleting the Deployment removes its ReplicaSets and Ships.
//!
//! A small in-test "agent" marks every Ship Running shortly after it appears.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tugboat_api::kinds::apps::{Deployment, ReplicaSet};
use tugboat_api::kinds::core::Ship;
use tugboat_controllers::deployment::{DeploymentConfig, DeploymentController};
use tugboat_controllers::leader::{LeaderElectionConfig, LeaderElector};
use tugboat_controllers::replicaset::{ReplicaSetConfig, ReplicaSetController};
use tugboat_testsuite::kube::{admin_client, eventually, install_crypto, start_with_api, Kubectl};
use tugboat_testsuite::test_runtime;

const IMAGE1: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";
const IMAGE2: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.10";
const IMAGE3: &str = "ghcr.io/sileader/tugboat-vm-images/debian:12";
const DEADLINE: Duration = Duration::from_secs(90);
const NS: &str = "default";
const DEPLOY: &str = "my-deployment";
const SELECTOR: &str = "app=my-app";

/// The seed's ShipClass and Deployment, verbatim.
const SHIPCLASS: &str = include_str!("../manifests/01-shipclass.yaml");
const MANIFEST: &str = include_str!("../manifests/05-deployment.yaml");

/// Marks every Ship Running a moment after it first appears, as a node agent would.
fn spawn_agent(ships: Api<Ship>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut first_seen: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let Ok(list) = ships.list(&ListParams::default()).await else {
                continue;
            };
            let now = tokio::time::Instant::now();
            for s in list.items {
                let Some(name) = s.metadata.name.clone() else {
                    continue;
                };
                let phase = s.status.as_ref().and_then(|st| st.phase.as_deref());
                if phase == Some("Running") || s.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let seen = *first_seen.entry(name.clone()).or_insert(now);
                if now.duration_since(seen) < Duration::from_millis(400) {
                    continue;
                }
                let _ = ships
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"phase": "Running"}})),
                    )
                    .await;
            }
        }
    })
}

/// Running Ships of the Deployment over time, while armed.
#[derive(Default, Debug)]
struct Tracker {
    /// name → (image, running).
    ships: BTreeMap<String, (String, bool)>,
    armed: bool,
    min_running: Option<usize>,
    /// Most Ships of `new_image` seen while a Ship of another image existed.
    new_while_old: usize,
    new_image: String,
}

impl Tracker {
    fn observe(&mut self) {
        if !self.armed {
            return;
        }
        let running = self.ships.values().filter(|(_, r)| *r).count();
        self.min_running = Some(self.min_running.map_or(running, |m| m.min(running)));
        let new = self
            .ships
            .values()
            .filter(|(i, _)| *i == self.new_image)
            .count();
        if new < self.ships.len() {
            self.new_while_old = self.new_while_old.max(new);
        }
    }
}

fn spawn_tracker(ships: Api<Ship>, t: Arc<Mutex<Tracker>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let cfg = watcher::Config::default().labels(SELECTOR);
        let mut stream = std::pin::pin!(watcher(ships, cfg));
        while let Some(ev) = stream.next().await {
            let Ok(mut t) = t.lock() else { return };
            match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    if s.metadata.deletion_timestamp.is_some() {
                        t.ships.remove(&name);
                    } else {
                        let running =
                            s.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Running");
                        t.ships.insert(name, (s.spec.image.clone(), running));
                    }
                }
                Ok(watcher::Event::Delete(s)) => {
                    t.ships.remove(&s.metadata.name.clone().unwrap_or_default());
                }
                _ => continue,
            }
            t.observe();
        }
    })
}

/// Waits until exactly `n` Ships exist, all of `image` and Running, and the Deployment's
/// status says so for its current generation.
async fn converge(ships: &Api<Ship>, deploys: &Api<Deployment>, n: usize, image: &str) {
    eventually(
        &format!("{n} running ships of {image}"),
        DEADLINE,
        || async {
            let list = ships
                .list(&ListParams::default().labels(SELECTOR))
                .await
                .map_err(|e| e.to_string())?;
            let live: Vec<&Ship> = list
                .items
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
                .collect();
            let good = live
                .iter()
                .filter(|s| {
                    s.spec.image == image
                        && s.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Running")
                })
                .count();
            let d = deploys.get(DEPLOY).await.map_err(|e| e.to_string())?;
            let st = d.status.clone().unwrap_or_default();
            let want = i32::try_from(n).map_err(|e| e.to_string())?;
            if live.len() == n
                && good == n
                && st.observed_generation == d.metadata.generation
                && st.replicas == Some(want)
                && st.updated_replicas == Some(want)
                && st.available_replicas == Some(want)
            {
                Ok(())
            } else {
                Err(format!("{} ships, {good} good; status {st:?}", live.len()))
            }
        },
    )
    .await;
}

fn ok(k: &Kubectl, args: &[&str]) -> String {
    k.ok(args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

fn revision(d: &Deployment) -> Option<String> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
}

#[test]
fn deployment_rolls_scales_undoes_and_recreates() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    let k = Kubectl::admin(&node)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timeout(Duration::from_secs(150));
    rt.block_on(async {
        let client = admin_client(&node).await;
        let elector = LeaderElector::new(
            client.clone(),
            LeaderElectionConfig::new("tugboat-controller-manager", "cm-a"),
        );
        let handle = elector.spawn();
        let rs_controller =
            ReplicaSetController::new(client.clone(), ReplicaSetConfig::default());
        tokio::spawn(rs_controller.run(handle.is_leader.clone()));
        let d_controller = DeploymentController::new(client.clone(), DeploymentConfig::default());
        tokio::spawn(d_controller.run(handle.is_leader.clone()));

        let ships: Api<Ship> = Api::namespaced(client.clone(), NS);
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let agent = spawn_agent(ships.clone());
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let watch = spawn_tracker(ships.clone(), tracker.clone());

        k.ok_stdin(&["apply", "-f", "-"], SHIPCLASS)
            .unwrap_or_else(|e| panic!("{e}"));
        k.ok_stdin(&["apply", "-f", "-"], MANIFEST)
            .unwrap_or_else(|e| panic!("{e}"));

        // 3 Running Ships through one ReplicaSet named after the template hash.
        converge(&ships, &deploys, 3, IMAGE1).await;
        ok(&k, &["rollout", "status", "deployment/my-deployment", "--timeout=120s"]);
        let list = sets.list(&ListParams::default()).await;
        let list = list.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.items.len(), 1, "{list:?}");
        let rs = &list.items[0];
        let hash = rs
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("ship-template-hash").cloned())
            .unwrap_or_default();
        assert!(!hash.is_empty(), "no ship-template-hash on {rs:?}");
        assert_eq!(rs.metadata.name.as_deref(), Some(format!("{DEPLOY}-{hash}").as_str()));
        let d = deploys.get(DEPLOY).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(revision(&d).as_deref(), Some("1"));
        let cond = d
            .status
            .clone()
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.reason);
        assert_eq!(cond.as_deref(), Some("NewReplicaSetAvailable"));

        // kubectl scale, up and down.
        ok(&k, &["scale", "deployment/my-deployment", "--replicas=5"]);
        converge(&ships, &deploys, 5, IMAGE1).await;
        ok(&k, &["scale", "deployment/my-deployment", "--replicas=3"]);
        converge(&ships, &deploys, 3, IMAGE1).await;

        // Rolling update: never below replicas - maxUnavailable (3 - floor(25% of 3) = 3).
        {
            let mut t = tracker.lock().unwrap_or_else(|e| panic!("{e}"));
            t.armed = true;
            t.min_running = None;
            t.new_image = IMAGE2.into();
        }
        let patch = format!(r#"{{"spec":{{"shipTemplate":{{"spec":{{"image":"{IMAGE2}"}}}}}}}}"#);
        ok(&k, &["patch", "deployment", DEPLOY, "--type=merge", "-p", &patch]);
        ok(&k, &["rollout", "status", "deployment/my-deployment", "--timeout=120s"]);
        converge(&ships, &deploys, 3, IMAGE2).await;
        let min = {
            let mut t = tracker.lock().unwrap_or_else(|e| panic!("{e}"));
            t.armed = false;
            t.min_running
        };
        assert!(min.is_some_and(|m| m >= 3), "running ships dropped to {min:?}");
        let history = ok(&k, &["rollout", "history", "deployment/my-deployment"]);
        let revisions: Vec<&str> = history
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.parse::<u32>().is_ok())
            .collect();
        assert_eq!(revisions, ["1", "2"], "{history}");

        // Undo: back to the first image, as revision 3.
        let out = ok(&k, &["rollout", "undo", "deployment/my-deployment"]);
        assert!(out.contains("rolled back"), "{out}");
        ok(&k, &["rollout", "status", "deployment/my-deployment", "--timeout=120s"]);
        converge(&ships, &deploys, 3, IMAGE1).await;
        let d = deploys.get(DEPLOY).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.spec.ship_template.spec.image, IMAGE1);
        assert_eq!(revision(&d).as_deref(), Some("3"));
        let history = ok(&k, &["rollout", "history", "deployment/my-deployment"]);
        assert!(history.contains('2') && history.contains('3'), "{history}");
        let out = ok(&k, &["rollout", "undo", "deployment/my-deployment", "--to-revision=2"]);
        assert!(out.contains("rolled back"), "{out}");
        converge(&ships, &deploys, 3, IMAGE2).await;
        // Undoing to the current template is a no-op kubectl recognises.
        let out = ok(&k, &["rollout", "undo", "deployment/my-deployment", "--to-revision=4"]);
        assert!(out.contains("skipped"), "{out}");

        // Recreate: no Ship of the new image while one of the old exists.
        {
            let mut t = tracker.lock().unwrap_or_else(|e| panic!("{e}"));
            t.armed = true;
            t.new_while_old = 0;
            t.new_image = IMAGE3.into();
        }
        let patch = format!(
            r#"{{"spec":{{"strategy":{{"type":"Recreate","rollingUpdate":null}},"shipTemplate":{{"spec":{{"image":"{IMAGE3}"}}}}}}}}"#
        );
        ok(&k, &["patch", "deployment", DEPLOY, "--type=merge", "-p", &patch]);
        ok(&k, &["rollout", "status", "deployment/my-deployment", "--timeout=120s"]);
        converge(&ships, &deploys, 3, IMAGE3).await;
        let new_while_old = {
            let mut t = tracker.lock().unwrap_or_else(|e| panic!("{e}"));
            t.armed = false;
            t.new_while_old
        };
        assert_eq!(new_while_old, 0, "recreate overlapped old and new ships");

        // Deleting the Deployment removes its ReplicaSets and Ships.
        ok(&k, &["delete", "deployment", DEPLOY]);
        eventually("replicasets and ships gone", DEADLINE, || async {
            let rs = sets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let sh = ships
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            if rs.items.is_empty() && sh.items.is_empty() {
                Ok(())
            } else {
                Err(format!("{} replicasets, {} ships", rs.items.len(), sh.items.len()))
            }
        })
        .await;
        agent.abort();
        watch.abort();
        handle.stop().await;
    });
}
