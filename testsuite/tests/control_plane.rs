//! The whole control loop in a 3-member cluster, driven with the real kubectl: every member
//! runs the scheduler and controller-manager (one of each active, by Lease) and a node agent
//! with the fake runtime.
//!
//! - the seed's Deployment, ReplicaSet and Fleet manifests, applied verbatim, get their Ships
//!   Running across the nodes; scale up and down; a rolling update never has fewer Running
//!   Ships than `replicas - maxUnavailable`; `rollout status|history|undo` work; deleting the
//!   Deployment removes everything it owned;
//! - a Ship that fits no node gets a FailedScheduling Event and stays Pending until a node
//!   fits;
//! - a node killed with SIGKILL turns NotReady, its Ships are replaced on the other nodes, and
//!   when it comes back it cleans up the stale ones without touching the replacements;
//! - killing the member holding the scheduler and controller-manager Leases hands both over and
//!   work continues.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tugboat_testsuite::harness::{wait_until, JoinSpec};
use tugboat_testsuite::kube::{wait_api_ready, Kubectl};
use tugboat_testsuite::{TugboatNode, TugboatOptions};

const DEADLINE: Duration = Duration::from_secs(90);
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests");
const SHIP_CLASS: &str = "apiVersion: v1\nkind: ShipClass\nmetadata:\n  name: small\nspec:\n  cpu:\n    cores: 1\n  memory:\n    size: 1Gi\n";

/// Node heartbeat and failure timings short enough for a test, long enough for a busy machine
/// not to mistake a live node for a dead one.
fn member_args() -> Vec<String> {
    [
        "--runtime",
        "fake",
        "--fake-boot-delay-ms",
        "300",
        "--fake-cni-plugins",
        "bridge",
        "--node-cpu",
        "16",
        "--node-memory",
        "64Gi",
        "--node-heartbeat-interval",
        "1",
        "--node-monitor-grace-period",
        "8",
        "--ship-eviction-timeout",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Cluster {
    nodes: Vec<TugboatNode>,
    names: Vec<String>,
}

impl Cluster {
    fn start() -> Cluster {
        let opts = |name: &str, join: Option<JoinSpec>| TugboatOptions {
            name: name.into(),
            api: true,
            controllers: true,
            join,
            extra_args: member_args(),
            ..TugboatOptions::default()
        };
        let a = TugboatNode::start(opts("a", None)).expect("start a");
        let token = a.create_token(&["--ttl", "10m"]).expect("token");
        let join = JoinSpec {
            peer: a.peer_addr().to_string(),
            token,
        };
        let b = TugboatNode::start(opts("b", Some(join.clone()))).expect("start b");
        let c = TugboatNode::start(opts("c", Some(join))).expect("start c");
        let nodes = vec![a, b, c];
        for n in &nodes {
            wait_api_ready(n).unwrap_or_else(|e| panic!("{e}"));
        }
        let cluster = Cluster {
            nodes,
            names: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
        };
        let k = cluster.kubectl(0);
        wait_until("three Ready nodes", DEADLINE, || {
            let ready = ready_nodes(&k)?;
            (ready.len() == 3).then_some(()).ok_or(format!("{ready:?}"))
        });
        cluster
    }

    fn kubectl(&self, i: usize) -> Kubectl {
        Kubectl::admin(&self.nodes[i]).expect("kubectl")
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }
}

fn json(k: &Kubectl, args: &[&str]) -> Result<Value, String> {
    k.json(args).map_err(|e| e.to_string())
}

fn items(v: &Value) -> Vec<Value> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn ready_nodes(k: &Kubectl) -> Result<Vec<String>, String> {
    let nodes = json(k, &["get", "nodes"])?;
    Ok(items(&nodes)
        .iter()
        .filter(|n| node_ready(n) == "True")
        .map(|n| s(n, "/metadata/name").to_string())
        .collect())
}

fn node_ready(n: &Value) -> String {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| s(c, "/type") == "Ready"))
        .map(|c| s(c, "/status").to_string())
        .unwrap_or_default()
}

/// A Ship as the tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ShipView {
    name: String,
    uid: String,
    node: String,
    phase: String,
    image: String,
    owner: String,
    deleting: bool,
}

fn ships(k: &Kubectl, selector: &str) -> Result<Vec<ShipView>, String> {
    let mut args = vec!["get", "ships"];
    if !selector.is_empty() {
        args.extend(["-l", selector]);
    }
    let list = json(k, &args)?;
    Ok(items(&list).iter().map(view).collect())
}

fn view(v: &Value) -> ShipView {
    ShipView {
        name: s(v, "/metadata/name").into(),
        uid: s(v, "/metadata/uid").into(),
        node: s(v, "/spec/nodeName").into(),
        phase: s(v, "/status/phase").into(),
        image: s(v, "/spec/image").into(),
        owner: v
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|o| {
                o.iter()
                    .find(|r| r.get("controller") == Some(&Value::Bool(true)))
            })
            .map(|r| s(r, "/name").to_string())
            .unwrap_or_default(),
        deleting: v.pointer("/metadata/deletionTimestamp").is_some(),
    }
}

/// Running Ships that are not being deleted.
fn running(ships: &[ShipView]) -> Vec<&ShipView> {
    ships
        .iter()
        .filter(|s| s.phase == "Running" && !s.deleting)
        .collect()
}

fn owned_by_prefix(ships: &[ShipView], prefix: &str) -> Vec<ShipView> {
    ships
        .iter()
        .filter(|s| s.owner.starts_with(prefix))
        .cloned()
        .collect()
}

#[track_caller]
fn wait_running(
    k: &Kubectl,
    what: &str,
    selector: &str,
    owner_prefix: &str,
    n: usize,
) -> Vec<ShipView> {
    wait_until(what, DEADLINE, || {
        let all = owned_by_prefix(&ships(k, selector)?, owner_prefix);
        let live: Vec<&ShipView> = all.iter().filter(|s| !s.deleting).collect();
        let up = running(&all);
        if up.len() == n && live.len() == n {
            Ok(up.into_iter().cloned().collect())
        } else {
            Err(format!(
                "{} running of {} live: {all:?}",
                up.len(),
                live.len()
            ))
        }
    })
}

fn apply_file(k: &Kubectl, file: &str) {
    let path = format!("{MANIFESTS}/{file}");
    k.ok(&["apply", "-f", &path])
        .unwrap_or_else(|e| panic!("kubectl apply -f {path}: {e}"));
}

/// Rolling-update watch: the fewest Running (not terminating) Deployment Ships seen at once.
struct RolloutWatch {
    child: tugboat_testsuite::kube::KubectlChild,
    state: BTreeMap<String, (bool, String)>,
    consumed: usize,
    min_running: usize,
}

impl RolloutWatch {
    fn start(k: &Kubectl, owner_prefix: &str, initial: &[ShipView]) -> RolloutWatch {
        let template = "{.type} {.object.metadata.name} {.object.status.phase} {.object.metadata.deletionTimestamp} {.object.metadata.ownerReferences[0].name}{\"\\n\"}";
        let child = k
            .spawn(&[
                "get",
                "ships",
                "-w",
                "--output-watch-events",
                "-o",
                &format!("jsonpath={template}"),
            ])
            .expect("kubectl get ships -w");
        let state = initial
            .iter()
            .filter(|s| s.owner.starts_with(owner_prefix))
            .map(|s| {
                (
                    s.name.clone(),
                    (s.phase == "Running" && !s.deleting, s.owner.clone()),
                )
            })
            .collect::<BTreeMap<_, _>>();
        let min_running = state.values().filter(|(r, _)| *r).count();
        RolloutWatch {
            child,
            state,
            consumed: 0,
            min_running,
        }
    }

    /// Folds in every event received so far.
    fn update(&mut self, owner_prefix: &str) {
        let lines = self.child.drain_for(Duration::from_millis(50));
        for line in &lines[self.consumed..] {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(kind), Some(name)) = (f.first(), f.get(1)) else {
                continue;
            };
            // Fields: type name phase [deletionTimestamp] owner: the owner is the last one.
            let owner = f.last().copied().unwrap_or("");
            if !owner.starts_with(owner_prefix) {
                continue;
            }
            if *kind == "DELETED" {
                self.state.remove(*name);
            } else {
                let phase = f.get(2).copied().unwrap_or("");
                let deleting = f.len() >= 5;
                self.state.insert(
                    name.to_string(),
                    (phase == "Running" && !deleting, owner.to_string()),
                );
            }
            let up = self.state.values().filter(|(r, _)| *r).count();
            self.min_running = self.min_running.min(up);
        }
        self.consumed = lines.len();
    }
}

#[test]
fn seed_workloads_run_scale_roll_back_and_go_away() {
    let cluster = Cluster::start();
    let k = cluster.kubectl(0);
    apply_file(&k, "01-shipclass.yaml");
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: NetworkClass\nmetadata:\n  name: my-network-class\n  namespace: default\nspec:\n  cniPlugin: bridge\n",
    )
    .expect("network class");
    apply_file(&k, "05-deployment.yaml");
    apply_file(&k, "06-replicaset.yaml");
    apply_file(&k, "04-fleet.yaml");

    // Everything reaches Running, spread over the nodes.
    let deployed = wait_running(&k, "3 Deployment Ships Running", "", "my-deployment-", 3);
    let replicas = wait_running(&k, "2 ReplicaSet Ships Running", "", "my-replicaset", 2);
    let frontend = wait_running(&k, "2 frontend Ships", "", "my-fleet-frontend", 2);
    let backend = wait_running(&k, "3 backend Ships", "", "my-fleet-backend", 3);
    let used: BTreeSet<&str> = [&deployed, &replicas, &frontend, &backend]
        .iter()
        .flat_map(|v| v.iter().map(|s| s.node.as_str()))
        .collect();
    assert!(used.len() >= 2, "10 Ships on one node: {used:?}");
    let fleet_ship = json(&k, &["get", "ship", &backend[0].name]).expect("fleet ship");
    assert_eq!(
        fleet_ship
            .pointer("/spec/networkClassName")
            .and_then(Value::as_str),
        Some("my-network-class"),
        "the Fleet's NetworkClass is injected: {fleet_ship}"
    );

    // Scale up and down.
    k.ok(&["scale", "deployment/my-deployment", "--replicas=5"])
        .expect("scale up");
    wait_running(&k, "5 after scale up", "", "my-deployment-", 5);
    k.ok(&["scale", "deployment/my-deployment", "--replicas=3"])
        .expect("scale down");
    let before = wait_running(&k, "3 after scale down", "", "my-deployment-", 3);
    let old_image = before[0].image.clone();
    k.ok(&[
        "rollout",
        "status",
        "deployment/my-deployment",
        "--timeout=60s",
    ])
    .expect("rollout status after scaling");

    // Rolling update: replicas 3, maxUnavailable 25% → 0, so never fewer than 3 Running.
    let all = ships(&k, "").expect("ships");
    let mut watch = RolloutWatch::start(&k, "my-deployment-", &all);
    let new_image = "ghcr.io/sileader/tugboat-vm-images/ubuntu:25.04";
    k.ok(&[
        "patch",
        "deployment",
        "my-deployment",
        "--type=merge",
        "-p",
        &format!("{{\"spec\":{{\"shipTemplate\":{{\"spec\":{{\"image\":\"{new_image}\"}}}}}}}}"),
    ])
    .expect("new image");
    wait_until("all Deployment Ships on the new image", DEADLINE, || {
        watch.update("my-deployment-");
        let all = owned_by_prefix(&ships(&k, "")?, "my-deployment-");
        let live: Vec<&ShipView> = all.iter().filter(|s| !s.deleting).collect();
        let up = running(&all);
        if live.len() == 3 && up.len() == 3 && up.iter().all(|s| s.image == new_image) {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });
    watch.update("my-deployment-");
    assert!(
        watch.min_running >= 3,
        "the rolling update dropped to {} Running Ships (replicas 3, maxUnavailable 0)",
        watch.min_running
    );
    k.ok(&[
        "rollout",
        "status",
        "deployment/my-deployment",
        "--timeout=60s",
    ])
    .expect("rollout status");
    let history = k
        .ok(&["rollout", "history", "deployment/my-deployment"])
        .expect("rollout history");
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "rollout history:\n{history}");

    // Undo: back to the first image.
    k.ok(&["rollout", "undo", "deployment/my-deployment"])
        .expect("rollout undo");
    wait_until("Deployment Ships back on the old image", DEADLINE, || {
        let all = owned_by_prefix(&ships(&k, "")?, "my-deployment-");
        let live: Vec<&ShipView> = all.iter().filter(|s| !s.deleting).collect();
        let up = running(&all);
        if live.len() == 3 && up.len() == 3 && up.iter().all(|s| s.image == old_image) {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });
    drop(watch);

    // A Ship no node fits: an Event says why, and it waits until a node fits.
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: picky\n  namespace: default\nspec:\n  image: example.org/img:1\n  shipClass: lightweight\n  nodeSelector:\n    disk: ssd\n",
    )
    .expect("picky ship");
    wait_until("a FailedScheduling Event for picky", DEADLINE, || {
        let described = k
            .ok(&["describe", "ship", "picky"])
            .map_err(|e| e.to_string())?;
        if described.contains("FailedScheduling") {
            Ok(())
        } else {
            Err(described)
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let picky = json(&k, &["get", "ship", "picky"]).expect("picky");
    assert_eq!(s(&picky, "/status/phase"), "Pending", "{picky}");
    assert_eq!(s(&picky, "/spec/nodeName"), "", "{picky}");
    k.ok(&["label", "node", "b", "disk=ssd"]).expect("label b");
    wait_until("picky Running on b", DEADLINE, || {
        let v = json(&k, &["get", "ship", "picky"])?;
        if s(&v, "/spec/nodeName") == "b" && s(&v, "/status/phase") == "Running" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });

    // Deleting the Deployment removes its ReplicaSets and Ships.
    k.ok(&["delete", "deployment", "my-deployment"])
        .expect("delete deployment");
    wait_until(
        "the Deployment's ReplicaSets and Ships gone",
        DEADLINE,
        || {
            let rs = json(&k, &["get", "replicasets"])?;
            let left_rs: Vec<String> = items(&rs)
                .iter()
                .map(|r| s(r, "/metadata/name").to_string())
                .filter(|n| n.starts_with("my-deployment-"))
                .collect();
            let left_ships = owned_by_prefix(&ships(&k, "")?, "my-deployment-");
            if left_rs.is_empty() && left_ships.is_empty() {
                Ok(())
            } else {
                Err(format!("{left_rs:?} {left_ships:?}"))
            }
        },
    );
    // The others are untouched.
    wait_running(&k, "the ReplicaSet's Ships stay", "", "my-replicaset", 2);
    wait_running(&k, "the Fleet's backend stays", "", "my-fleet-backend", 3);
}

#[test]
fn dead_nodes_and_dead_leaders_are_replaced() {
    let mut cluster = Cluster::start();
    let k0 = cluster.kubectl(0);
    k0.ok_stdin(&["apply", "-f", "-"], SHIP_CLASS)
        .expect("ship class");
    k0.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web\n  namespace: default\nspec:\n  replicas: 6\n  selector:\n    app: web\n  shipTemplate:\n    metadata:\n      labels:\n        app: web\n    spec:\n      image: example.org/web:1\n      shipClass: small\n",
    )
    .expect("replicaset");
    let first = wait_running(&k0, "6 Ships Running", "app=web", "web", 6);

    // Kill a node that is neither member a (the kubectl endpoint) nor the controller holder,
    // and holds Ships.
    let holder = lease_holder(&k0, "tugboat-controller-manager");
    let victim = ["b", "c"]
        .into_iter()
        .find(|n| *n != holder && first.iter().any(|s| s.node == *n))
        .unwrap_or_else(|| panic!("no member but {holder} holds Ships: {first:?}"))
        .to_string();
    let vi = cluster.index(&victim);
    let stale: Vec<ShipView> = first.iter().filter(|s| s.node == victim).cloned().collect();
    cluster.nodes[vi].kill9();

    wait_until("the dead node NotReady and tainted", DEADLINE, || {
        let n = json(&k0, &["get", "node", &victim])?;
        let tainted = n
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| {
                t.iter()
                    .any(|t| s(t, "/key") == "node.kubernetes.io/unreachable")
            });
        if node_ready(&n) == "Unknown" && tainted {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    let replaced = wait_until("6 Running Ships on the live nodes", DEADLINE, || {
        let all = ships(&k0, "app=web")?;
        let up: Vec<ShipView> = running(&all)
            .into_iter()
            .filter(|s| s.node != victim)
            .cloned()
            .collect();
        if up.len() == 6 {
            Ok(up)
        } else {
            Err(format!("{all:?}"))
        }
    });
    for s in &stale {
        assert!(
            !replaced.iter().any(|r| r.uid == s.uid),
            "a Ship of the dead node counted as running: {s:?}"
        );
    }

    // The stale Ships wait for their node's agent and say so; the escape hatch drops one.
    let first_stale = &stale[0];
    wait_until(
        "a DeletionBlocked condition on a stale Ship",
        DEADLINE,
        || {
            let v = json(&k0, &["get", "ship", &first_stale.name])?;
            let blocked = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| s(c, "/type") == "DeletionBlocked"));
            if blocked && v.pointer("/metadata/deletionTimestamp").is_some() {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
    k0.ok(&[
        "annotate",
        "ship",
        &first_stale.name,
        "tugboat.io/force-delete-local-state=true",
    ])
    .expect("force delete");
    wait_until("the force-deleted Ship gone", DEADLINE, || {
        let left = ships(&k0, "app=web")?;
        if left.iter().any(|s| s.uid == first_stale.uid) {
            Err(format!("{left:?}"))
        } else {
            Ok(())
        }
    });

    // The node comes back: its stale Ships go away, the replacements stay as they are.
    cluster.nodes[vi].restart().expect("restart the dead node");
    wait_until("the node Ready again, untainted", DEADLINE, || {
        let n = json(&k0, &["get", "node", &victim])?;
        let tainted = n
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| {
                t.iter()
                    .any(|t| s(t, "/key") == "node.kubernetes.io/unreachable")
            });
        if node_ready(&n) == "True" && !tainted {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    wait_until("the stale Ships gone", DEADLINE, || {
        let all = ships(&k0, "app=web")?;
        let left: Vec<&ShipView> = all
            .iter()
            .filter(|s| stale.iter().any(|t| t.uid == s.uid))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    let after = ships(&k0, "app=web").expect("ships");
    for r in &replaced {
        let now = after
            .iter()
            .find(|s| s.uid == r.uid)
            .unwrap_or_else(|| panic!("replacement {} went away: {after:?}", r.name));
        assert_eq!(now, r, "a replacement was touched");
    }
    assert_eq!(running(&after).len(), 6, "{after:?}");

    // Kill the member holding both Leases: another takes over and work continues.
    let holder = lease_holder(&k0, "tugboat-controller-manager");
    let hi = cluster.index(&holder);
    let survivor = (0..3).find(|i| *i != hi).expect("survivor");
    let k = cluster.kubectl(survivor);
    cluster.nodes[hi].kill9();
    wait_until(
        "new scheduler and controller-manager holders",
        DEADLINE,
        || {
            let cm = lease_holder(&k, "tugboat-controller-manager");
            let sched = lease_holder(&k, "tugboat-scheduler");
            if !cm.is_empty() && cm != holder && !sched.is_empty() && sched != holder {
                Ok(())
            } else {
                Err(format!("controller-manager {cm:?}, scheduler {sched:?}"))
            }
        },
    );
    k.ok(&["scale", "replicaset/web", "--replicas=8"])
        .expect("scale up after the hand-over");
    wait_until("8 Running on the live nodes", DEADLINE, || {
        let all = ships(&k, "app=web")?;
        let up = running(&all)
            .into_iter()
            .filter(|s| s.node != holder)
            .count();
        if up == 8 {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });
    cluster.nodes[hi].restart().expect("restart the old holder");
}

fn lease_holder(k: &Kubectl, lease: &str) -> String {
    k.jsonpath(
        &["get", "lease", lease, "-n", "tugboat-system"],
        "{.spec.holderIdentity}",
    )
    .unwrap_or_default()
}

/// A worker (no copy of the store) runs the agent against a member's apiserver with its node
/// certificate, and that certificate reaches only the worker's own objects.
#[test]
fn a_worker_runs_its_ships_and_touches_nothing_else() {
    let a = TugboatNode::start(TugboatOptions {
        name: "a".into(),
        api: true,
        controllers: true,
        // One voter, no standbys: the next node to join is a worker.
        extra_args: ["--max-voters", "1", "--standbys", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..TugboatOptions::default()
    })
    .expect("start a");
    wait_api_ready(&a).unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl::admin(&a).expect("kubectl");
    let token = a.create_token(&["--ttl", "10m"]).expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ports = tugboat_testsuite::free_ports(3).expect("ports");
    let mut worker =
        std::process::Command::new(tugboat_testsuite::tugboatd_bin().expect("tugboatd"))
            .args(["join", &a.peer_addr().to_string(), "--token", &token])
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", "w"])
            .args(["--peer-listen", &format!("127.0.0.1:{}", ports[0])])
            .args(["--etcd-listen", &format!("127.0.0.1:{}", ports[1])])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[2])])
            .args(member_args())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("spawn the worker");
    let log = dir.path().join("log");
    let worker_log = || std::fs::read_to_string(&log).unwrap_or_default();

    wait_until("the worker's Node Ready", DEADLINE, || {
        let ready = ready_nodes(&k)?;
        (ready == ["w"])
            .then_some(())
            .ok_or(format!("{ready:?}\n{}", worker_log()))
    });
    k.ok_stdin(&["apply", "-f", "-"], SHIP_CLASS)
        .expect("ship class");
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: on-worker\n  namespace: default\nspec:\n  image: example.org/img:1\n  shipClass: small\n---\napiVersion: v1\nkind: Ship\nmetadata:\n  name: elsewhere\n  namespace: default\nspec:\n  image: example.org/img:1\n  shipClass: small\n  nodeName: somewhere-else\n",
    )
    .expect("ships");
    wait_until("the Ship Running on the worker", DEADLINE, || {
        let v = json(&k, &["get", "ship", "on-worker"])?;
        if s(&v, "/spec/nodeName") == "w" && s(&v, "/status/phase") == "Running" {
            Ok(())
        } else {
            Err(format!("{v}\n{}", worker_log()))
        }
    });

    // The binding subresource binds only an unbound Ship.
    let binding = dir.path().join("binding.json");
    std::fs::write(
        &binding,
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"on-worker"},"target":{"kind":"Node","name":"elsewhere"}}"#,
    )
    .expect("binding file");
    let raw = "/api/v1/namespaces/default/ships/on-worker/binding";
    let binding_path = binding.to_string_lossy().to_string();
    let again = k
        .fail(&["create", "--raw", raw, "-f", &binding_path])
        .expect("second binding");
    assert!(
        again.stderr.contains("already assigned"),
        "a second binding: {}",
        again.stderr
    );

    // kubectl with the worker's own node certificate.
    let pki = data.join("pki");
    let read_b64 = |f: &str| {
        use base64::Engine as _;
        let pem = std::fs::read(pki.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    let node_kubeconfig = dir.path().join("node.kubeconfig");
    tugboat_testsuite::kube::write_kubeconfig_with_user(
        k.kubeconfig(),
        serde_json::json!({
            "client-certificate-data": read_b64("peer.crt"),
            "client-key-data": read_b64("peer.key"),
        }),
        &node_kubeconfig,
    )
    .expect("node kubeconfig");
    let as_node = k
        .with_kubeconfig(&node_kubeconfig)
        .expect("kubectl as the node");
    let who = as_node.ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(who.expect("whoami").trim(), "system:node:w");
    as_node
        .ok(&["get", "ship", "on-worker"])
        .expect("the node reads its own Ship");
    as_node
        .ok(&["label", "node", "w", "rack=r1", "--overwrite"])
        .expect("the node labels its own Node");
    for args in [
        vec!["get", "ship", "elsewhere"],
        vec!["get", "ships", "-A"],
        vec!["get", "secrets", "-A"],
        vec!["delete", "ship", "on-worker"],
        vec!["label", "namespace", "default", "x=y"],
        vec![
            "patch",
            "ship",
            "on-worker",
            "--type=merge",
            "-p",
            r#"{"spec":{"nodeName":"a"}}"#,
        ],
        vec!["label", "ship", "on-worker", "stolen=yes"],
        vec!["taint", "node", "w", "k=v:NoSchedule"],
        vec![
            "label",
            "node",
            "w",
            "node-restriction.tugboat.io/trusted=yes",
        ],
        vec![
            "get",
            "lease",
            "tugboat-controller-manager",
            "-n",
            "tugboat-system",
        ],
    ] {
        let out = as_node
            .fail(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.stderr.contains("Forbidden") || out.stderr.contains("forbidden"),
            "{args:?} as the node: {}",
            out.stderr
        );
    }
    let out = as_node
        .fail(&["create", "--raw", raw, "-f", &binding_path])
        .expect("binding as the node");
    assert!(
        out.stderr.contains("orbidden"),
        "a node binding Ships: {}",
        out.stderr
    );
    let _ = worker.kill();
    let _ = worker.wait();
}
