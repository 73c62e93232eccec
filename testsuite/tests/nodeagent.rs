//! The node agent against a real `tugboatd` apiserver, with the in-process fake runtime.
//!
//! - the agent registers a Ready Node with capacity and a Lease;
//! - a Ship bound to the node gets the agent's finalizer and reaches Running;
//! - `runStrategy: Halted` stops it; deleting it removes the object only after the VM is gone;
//! - a crashing VM (fake crash-after) under `RerunOnFailure` is restarted;
//! - a restarted agent leaves a running VM untouched (same start time) and deletes VMs
//!   without a Ship.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use tugboat_nodeagent::agent::{node_resource, ship_resource, LEASE_NAMESPACE};
use tugboat_nodeagent::{
    FakeConfig, FakeRuntime, NodeAgent, NodeAgentConfig, NodeResources, Runtime, VmSpec, VmState,
    FINALIZER,
};
use tugboat_testsuite::kube::{admin_client, eventually, wait_api_ready};
use tugboat_testsuite::{test_runtime, TugboatNode, TugboatOptions};

const IMAGE: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";
const DEADLINE: Duration = Duration::from_secs(60);

fn agent_config(node: &str) -> NodeAgentConfig {
    let mut c = NodeAgentConfig::new(node);
    c.runtime_class = "fake".into();
    c.capacity = Some(NodeResources {
        cpu: "16".into(),
        memory: "64Gi".into(),
    });
    c.heartbeat_interval = Duration::from_secs(1);
    c.status_interval = Duration::from_secs(5);
    c.gc_interval = Duration::from_secs(2);
    c.restart_backoff_base = Duration::from_millis(200);
    c.restart_backoff_max = Duration::from_secs(5);
    c
}

fn classes_resource() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("", "v1", "ShipClass"),
        "shipclasses",
    )
}

async fn create_ship(api: &Api<DynamicObject>, name: &str, node: &str, strategy: &str) -> String {
    let ship = DynamicObject::new(name, &ship_resource()).data(json!({
        "spec": {
            "image": IMAGE,
            "shipClass": "small",
            "nodeName": node,
            "runStrategy": strategy,
        }
    }));
    let created = api
        .create(&PostParams::default(), &ship)
        .await
        .unwrap_or_else(|e| panic!("create ship {name}: {e}"));
    created
        .uid()
        .unwrap_or_else(|| panic!("ship {name} has no uid"))
}

async fn ship_phase(
    api: &Api<DynamicObject>,
    name: &str,
    phase: &str,
) -> Result<DynamicObject, String> {
    let s = api
        .get(name)
        .await
        .map_err(|e| format!("get ship {name}: {e}"))?;
    match s.data.pointer("/status/phase").and_then(Value::as_str) {
        Some(p) if p == phase => Ok(s),
        _ => Err(format!("{:?}", s.data.get("status"))),
    }
}

fn start_time(s: &DynamicObject) -> Option<String> {
    s.data
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[test]
fn node_agent_drives_ships_with_the_fake_runtime() {
    let node = TugboatNode::start(TugboatOptions {
        api: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("start tugboatd: {e}"));
    wait_api_ready(&node).unwrap_or_else(|e| panic!("{e}"));
    let rt = test_runtime();
    rt.block_on(async {
        let client = admin_client(&node).await;
        // The agent sizes VMs from the Ships' ShipClass.
        let classes: Api<DynamicObject> = Api::all_with(client.clone(), &classes_resource());
        let class = DynamicObject::new("small", &classes_resource()).data(json!({
            "spec": {"cpu": {"cores": 1}, "memory": {"size": "1Gi"}}
        }));
        classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap_or_else(|e| panic!("create ShipClass: {e}"));
        let fake = Arc::new(FakeRuntime::new(FakeConfig {
            boot_delay: Duration::from_millis(200),
            seed: 1,
            ..FakeConfig::default()
        }));
        // A VM left over from an earlier life of the node, with no Ship: deleted on start.
        fake.start(&VmSpec {
            uid: "stale-uid".into(),
            namespace: "default".into(),
            name: "gone".into(),
            image: IMAGE.into(),
            ..VmSpec::default()
        })
        .await
        .unwrap_or_else(|e| panic!("start stale VM: {e}"));
        let agent = NodeAgent::start(client.clone(), fake.clone(), agent_config("fake-1"))
            .await
            .unwrap_or_else(|e| panic!("start agent: {e}"));
        assert_eq!(agent.node_name(), "fake-1");
        assert!(
            fake.status("stale-uid").await.ok().flatten().is_none(),
            "the VM without a Ship survived the agent's start"
        );

        // The Node is registered Ready with its capacity and labels; the Lease is held.
        let nodes: Api<DynamicObject> = Api::all_with(client.clone(), &node_resource());
        eventually("Node fake-1 Ready", DEADLINE, || async {
            let n = nodes
                .get("fake-1")
                .await
                .map_err(|e| format!("get node: {e}"))?;
            let ready = n
                .data
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type") == Some(&json!("Ready"))
                            && c.get("status") == Some(&json!("True"))
                    })
                });
            let cpu = n.data.pointer("/status/capacity/cpu").cloned();
            let alloc = n.data.pointer("/status/allocatable/memory").cloned();
            let rc = n.labels().get("tugboat.io/runtime-class").cloned();
            if ready
                && cpu == Some(json!("16"))
                && alloc == Some(json!("64Gi"))
                && rc.as_deref() == Some("fake")
            {
                Ok(())
            } else {
                Err(format!(
                    "{:?} labels {:?}",
                    n.data.get("status"),
                    n.labels()
                ))
            }
        })
        .await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        eventually("Lease fake-1 held", DEADLINE, || async {
            let l = leases
                .get("fake-1")
                .await
                .map_err(|e| format!("get lease: {e}"))?;
            let spec = l.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() == Some("fake-1") && spec.renew_time.is_some() {
                Ok(())
            } else {
                Err(format!("{spec:?}"))
            }
        })
        .await;

        // A Ship bound to the node gets the finalizer and reaches Running.
        let ships: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &ship_resource());
        let uid = create_ship(&ships, "web", "fake-1", "Always").await;
        let running = eventually("web Running", DEADLINE, || {
            ship_phase(&ships, "web", "Running")
        })
        .await;
        assert!(running.finalizers().iter().any(|f| f == FINALIZER));
        assert_eq!(
            running.data.pointer("/status/nodeName"),
            Some(&json!("fake-1"))
        );
        assert!(
            start_time(&running).is_some(),
            "no startTime: {:?}",
            running.data
        );
        assert_eq!(
            fake.status(&uid).await.ok().flatten().map(|s| s.state),
            Some(VmState::Running)
        );

        // Halted stops it.
        let halt = json!({"spec": {"runStrategy": "Halted"}});
        ships
            .patch("web", &PatchParams::default(), &Patch::Merge(&halt))
            .await
            .unwrap_or_else(|e| panic!("patch web Halted: {e}"));
        eventually("web Stopped", DEADLINE, || {
            ship_phase(&ships, "web", "Stopped")
        })
        .await;
        assert_eq!(
            fake.status(&uid).await.ok().flatten().map(|s| s.state),
            Some(VmState::Stopped)
        );

        // Deleting it: the object goes only after the runtime no longer has the VM.
        ships
            .delete("web", &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete web: {e}"));
        eventually("web gone", DEADLINE, || async {
            match ships.get_opt("web").await {
                Ok(None) => Ok(()),
                Ok(Some(s)) => Err(format!("still there: {:?}", s.metadata.finalizers)),
                Err(e) => Err(format!("get web: {e}")),
            }
        })
        .await;
        let listed = fake.list().await.unwrap_or_else(|e| panic!("list: {e}"));
        assert!(!listed.contains(&uid), "VM of deleted ship still listed");

        // A Ship that stays running across an agent restart.
        let keep_uid = create_ship(&ships, "keep", "fake-1", "Always").await;
        let before = eventually("keep Running", DEADLINE, || {
            ship_phase(&ships, "keep", "Running")
        })
        .await;
        let vm_before = fake.status(&keep_uid).await.ok().flatten();
        agent.shutdown().await;
        let agent = NodeAgent::start(client.clone(), fake.clone(), agent_config("fake-1"))
            .await
            .unwrap_or_else(|e| panic!("restart agent: {e}"));
        // Give the new agent a reconcile round: a new Ship must reach Running through it.
        create_ship(&ships, "after-restart", "fake-1", "Always").await;
        eventually("after-restart Running", DEADLINE, || {
            ship_phase(&ships, "after-restart", "Running")
        })
        .await;
        let after = ships
            .get("keep")
            .await
            .unwrap_or_else(|e| panic!("get keep: {e}"));
        assert_eq!(start_time(&after), start_time(&before));
        assert_eq!(after.data.pointer("/status/phase"), Some(&json!("Running")));
        assert_eq!(fake.status(&keep_uid).await.ok().flatten(), vm_before);

        // A crashing VM under RerunOnFailure is restarted (separate node and runtime).
        let crashy = Arc::new(FakeRuntime::new(FakeConfig {
            boot_delay: Duration::from_millis(200),
            crash_after: Some(Duration::from_millis(500)),
            crash_boots: Some(1),
            seed: 2,
            ..FakeConfig::default()
        }));
        let crash_agent = NodeAgent::start(client.clone(), crashy.clone(), agent_config("fake-2"))
            .await
            .unwrap_or_else(|e| panic!("start crash agent: {e}"));
        let crash_uid = create_ship(&ships, "flaky", "fake-2", "RerunOnFailure").await;
        let restarted = eventually("flaky restarted and Running", DEADLINE, || async {
            let s = ship_phase(&ships, "flaky", "Running").await?;
            match s
                .data
                .pointer("/status/restartCount")
                .and_then(Value::as_i64)
            {
                Some(n) if n >= 1 => Ok(s),
                _ => Err(format!("{:?}", s.data.get("status"))),
            }
        })
        .await;
        assert!(start_time(&restarted).is_some());
        assert_eq!(
            crashy
                .status(&crash_uid)
                .await
                .ok()
                .flatten()
                .map(|s| s.restarts),
            Some(1)
        );

        crash_agent.shutdown().await;
        agent.shutdown().await;
    });
}
