//! The Fleet controller (crate `tugboat-controllers`, with the ReplicaSet controller) against a
//! running `tugboatd`, in-process behind Lease leader election:
//!
//! - the seed's Fleet manifest (applied verbatim with kubectl) gets one ReplicaSet per
//!   component, `<fleet>-<component>`, controlled by the Fleet, labelled with the Fleet and the
//!   component, with the Fleet's NetworkClass in its Ship template and the component's replicas;
//! - `status` counts the components whose Ships are all ready (an in-test "agent" marks Ships
//!   Running), per-component counts and the observed generation;
//! - a component removed from the Fleet loses its ReplicaSet and Ships.

use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tugboat_api::kinds::apps::{Fleet, ReplicaSet};
use tugboat_api::kinds::core::Ship;
use tugboat_controllers::fleet::{FleetConfig, FleetController, COMPONENT_LABEL, FLEET_LABEL};
use tugboat_controllers::leader::{LeaderElectionConfig, LeaderElector};
use tugboat_controllers::replicaset::{ReplicaSetConfig, ReplicaSetController};
use tugboat_testsuite::kube::{admin_client, eventually, install_crypto, start_with_api, Kubectl};
use tugboat_testsuite::test_runtime;

const DEADLINE: Duration = Duration::from_secs(90);
const NS: &str = "default";
const FLEET: &str = "my-fleet";
const NETWORK: &str = "my-network-class";

/// The seed's ShipClass and Fleet, verbatim.
const SHIPCLASS: &str = include_str!("../manifests/01-shipclass.yaml");
const MANIFEST: &str = include_str!("../manifests/04-fleet.yaml");

/// Marks every Ship Running, as a node agent would.
fn spawn_agent(ships: Api<Ship>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(list) = ships.list(&ListParams::default()).await else {
                continue;
            };
            for s in list.items {
                let phase = s.status.as_ref().and_then(|st| st.phase.as_deref());
                if phase == Some("Running") || s.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some(name) = s.metadata.name.clone() else {
                    continue;
                };
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

#[test]
fn fleet_runs_one_replicaset_per_component() {
    install_crypto();
    let node = start_with_api();
    let rt = test_runtime();
    let k = Kubectl::admin(&node).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let client = admin_client(&node).await;
        let elector = LeaderElector::new(
            client.clone(),
            LeaderElectionConfig::new("tugboat-controller-manager", "cm-a"),
        );
        let handle = elector.spawn();
        let rs_controller = ReplicaSetController::new(client.clone(), ReplicaSetConfig::default());
        tokio::spawn(rs_controller.run(handle.is_leader.clone()));
        let fleet_controller = FleetController::new(client.clone(), FleetConfig::default());
        tokio::spawn(fleet_controller.run(handle.is_leader.clone()));

        let ships: Api<Ship> = Api::namespaced(client.clone(), NS);
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let fleets: Api<Fleet> = Api::namespaced(client.clone(), NS);
        k.ok_stdin(&["apply", "-f", "-"], SHIPCLASS)
            .unwrap_or_else(|e| panic!("{e}"));
        k.ok_stdin(&["apply", "-f", "-"], MANIFEST)
            .unwrap_or_else(|e| panic!("{e}"));
        let fleet = fleets.get(FLEET).await.unwrap_or_else(|e| panic!("{e}"));
        let uid = fleet.metadata.uid.clone().unwrap_or_default();

        // One ReplicaSet per component, with the Fleet's labels, owner and network.
        for (component, replicas) in [("frontend", 2), ("backend", 3)] {
            let name = format!("{FLEET}-{component}");
            let rs = eventually(&format!("replicaset {name}"), DEADLINE, || async {
                sets.get(&name).await.map_err(|e| e.to_string())
            })
            .await;
            assert_eq!(rs.spec.replicas, Some(replicas));
            let owner = rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .cloned()
                .unwrap_or_else(|| panic!("{name} has no controller"));
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Fleet", uid.as_str())
            );
            let labels = rs.spec.ship_template.labels();
            assert_eq!(labels.get(FLEET_LABEL).map(String::as_str), Some(FLEET));
            assert_eq!(
                labels.get(COMPONENT_LABEL).map(String::as_str),
                Some(component)
            );
            assert_eq!(labels.get("role").map(String::as_str), Some(component));
            assert_eq!(
                rs.spec.ship_template.spec.network_class_name.as_deref(),
                Some(NETWORK)
            );
        }

        // Ships with the network; status counts every component ready.
        let agent = spawn_agent(ships.clone());
        eventually("fleet ready", DEADLINE, || async {
            let f = fleets.get(FLEET).await.map_err(|e| e.to_string())?;
            let st = f.status.clone().unwrap_or_default();
            let counts: Vec<(String, Option<i32>, Option<i32>)> = st
                .components
                .iter()
                .map(|c| (c.name.clone(), c.replicas, c.ready_replicas))
                .collect();
            let want = vec![
                ("frontend".to_string(), Some(2), Some(2)),
                ("backend".to_string(), Some(3), Some(3)),
            ];
            if st.ready_components == Some(2)
                && st.total_components == Some(2)
                && st.observed_generation == f.metadata.generation
                && counts == want
            {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        })
        .await;
        let list = ships
            .list(&ListParams::default().labels(&format!("{FLEET_LABEL}={FLEET}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.items.len(), 5);
        for s in &list.items {
            assert_eq!(s.spec.network_class_name.as_deref(), Some(NETWORK));
        }
        let out = k
            .ok(&["get", "fleet", FLEET])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("2/2"), "{out}");

        // Removing a component removes its ReplicaSet and Ships.
        k.ok(&[
            "patch",
            "fleet",
            FLEET,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/components/1"}]"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        eventually("backend removed", DEADLINE, || async {
            let rs = sets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let backend_ships = ships
                .list(&ListParams::default().labels(&format!("{COMPONENT_LABEL}=backend")))
                .await
                .map_err(|e| e.to_string())?;
            let f = fleets.get(FLEET).await.map_err(|e| e.to_string())?;
            let st = f.status.clone().unwrap_or_default();
            if rs.items.len() == 1
                && backend_ships.items.is_empty()
                && st.total_components == Some(1)
                && st.ready_components == Some(1)
            {
                Ok(())
            } else {
                Err(format!(
                    "{} replicasets, {} backend ships, {st:?}",
                    rs.items.len(),
                    backend_ships.items.len()
                ))
            }
        })
        .await;
        agent.abort();
        handle.stop().await;
    });
}
