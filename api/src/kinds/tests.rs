//! Tests of the kinds: seed manifests, defaults, decode errors, validation, tables.

use super::registry;
use crate::registry::{Registry, ResourceDef};
use serde_json::{json, Value};

/// The manifests of the Tugboat design document, verbatim.
const SEED_MANIFESTS: &str = r#"
apiVersion: v1
kind: ShipClass
metadata:
  name: lightweight
spec:
  cpu:
    architecture: x64
    cores: 2
  memory:
    size: 4Gi
---
apiVersion: v1
kind: Ship
metadata:
  namespace: default
  name: ship
spec:
  image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
  shipClass: lightweight
  volumes:
    - name: data-disk
      persistentVolumeClaim:
        claimName: data-disk
    - name: app-config
      configMap:
        name: app-config
    - name: app-secret
      secret:
        secretName: app-secret
---
apiVersion: apps/v1
kind: Fleet
metadata:
  namespace: default
  name: my-fleet
spec:
  networkClassName: my-network-class
  components:
    - name: frontend
      replicas: 2
      shipTemplate:
        metadata:
          labels:
            role: frontend
        spec:
          image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
          shipClass: lightweight
    - name: backend
      replicas: 3
      shipTemplate:
        metadata:
          labels:
            role: backend
        spec:
          image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
          shipClass: lightweight
---
apiVersion: apps/v1
kind: Deployment
metadata:
  namespace: default
  name: my-deployment
spec:
  replicas: 3
  selector:
    app: my-app
  shipTemplate:
    metadata:
      labels:
        app: my-app
    spec:
      image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
      shipClass: lightweight
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  namespace: default
  name: my-replicaset
spec:
  replicas: 2
  selector:
    app: my-app
  shipTemplate:
    metadata:
      labels:
        app: my-app
    spec:
      image: ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04
      shipClass: lightweight
---
apiVersion: v1
kind: RuntimeClass
metadata:
  name: standard
spec:
  liveMigration: true
  hotplug:
    cpu:
      add: true
      remove: false
    memory:
      add: true
      remove: false
    nic:
      add: true
      remove: true
    storage:
      add: true
      remove: true
---
apiVersion: v1
kind: ServiceAccount
metadata:
  namespace: default
  name: my-service-account
---
apiVersion: authorization/v1
kind: Role
metadata:
  namespace: default
  name: ship-reader
rules:
  - apiGroups: [ "" ]
    resources: [ "ships" ]
    verbs: [ "get", "list", "watch" ]
---
apiVersion: authorization/v1
kind: ClusterRole
metadata:
  name: node-reader
rules:
  - apiGroups: [ "" ]
    resources: [ "nodes" ]
    verbs: [ "get", "list", "watch" ]
---
apiVersion: authorization/v1
kind: RoleBinding
metadata:
  namespace: default
  name: ship-reader-binding
roleRef:
  apiGroup: authorization
  kind: Role
  name: ship-reader
subjects:
  - kind: User
    name: alice
  - kind: ServiceAccount
    namespace: default
    name: my-service-account
---
apiVersion: authorization/v1
kind: ClusterRoleBinding
metadata:
  name: node-reader-binding
roleRef:
  apiGroup: authorization
  kind: ClusterRole
  name: node-reader
subjects:
  - kind: Group
    name: ops-team
---
apiVersion: v1
kind: ClusterNetworkClass
metadata:
  name: flannel
spec:
  cniPlugin: flannel
  config:
    type: flannel
    delegate:
      isDefaultGateway: true
"#;

fn manifests(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

fn def_for<'a>(reg: &'a Registry, obj: &Value) -> &'a ResourceDef {
    let av = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    reg.by_kind(av, kind)
        .unwrap_or_else(|| panic!("{av} {kind} not registered"))
}

fn decode(reg: &Registry, obj: Value) -> Value {
    let def = def_for(reg, &obj);
    def.ops.decode(obj).expect("decodes")
}

fn errors(reg: &Registry, obj: Value) -> Vec<String> {
    let def = def_for(reg, &obj).clone();
    let obj = def.ops.decode(obj).expect("decodes");
    def.ops
        .validate(&obj, None)
        .iter()
        .map(|e| e.render())
        .collect()
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {"selector": {"app": "x"},
                 "shipTemplate": {"metadata": {"labels": {"app": "x"}},
                                  "spec": {"image": "img", "shipClass": "small"}}}
    })
}

#[test]
fn kinds_seed_manifests_decode_and_validate() {
    let reg = registry();
    let api = crate::openapi::OpenApi::new(&reg);
    let docs = manifests(SEED_MANIFESTS);
    assert_eq!(docs.len(), 12);
    for doc in docs {
        let def = def_for(&reg, &doc).clone();
        assert!(
            api.unknown_fields(&def, &doc).is_empty(),
            "{}: {:?}",
            def.kind,
            api.unknown_fields(&def, &doc)
        );
        let decoded = def
            .ops
            .decode(doc.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", def.kind));
        assert_eq!(decoded["apiVersion"], doc["apiVersion"]);
        assert_eq!(decoded["kind"], doc["kind"]);
        assert_eq!(decoded["metadata"], doc["metadata"]);
        let errs = def.ops.validate(&decoded, None);
        assert!(errs.is_empty(), "{}: {errs:?}", def.kind);
        // Decoding is idempotent and the result validates against the schema too.
        assert_eq!(def.ops.decode(decoded.clone()).unwrap(), decoded);
        assert!(
            api.unknown_fields(&def, &decoded).is_empty(),
            "{}",
            def.kind
        );
        let cells = def.ops.cells(&decoded);
        assert_eq!(cells.len(), def.ops.columns().len(), "{}", def.kind);
        // The same objects through the rbac.authorization.k8s.io group.
        if def.group == "authorization" {
            let mut alt = doc.clone();
            alt["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
            let alt_def = def_for(&reg, &alt);
            assert_eq!(alt_def.storage, def.storage);
            assert!(alt_def
                .ops
                .validate(&alt_def.ops.decode(alt.clone()).unwrap(), None)
                .is_empty());
        }
    }
}

#[test]
fn kinds_defaults_applied() {
    let reg = registry();
    let d = decode(&reg, deployment());
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert_eq!(d["spec"]["shipTemplate"]["spec"]["runStrategy"], "Always");
    assert!(d.get("status").is_none());

    let ship = decode(
        &reg,
        json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": "s"},
               "spec": {"image": "i", "shipClass": "c", "unknownField": 1}}),
    );
    assert_eq!(ship["spec"]["runStrategy"], "Always");
    assert_eq!(ship["status"]["phase"], "Pending");
    assert!(ship["spec"].get("unknownField").is_none());
    assert!(ship["spec"].get("nodeName").is_none());

    let secret = decode(
        &reg,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
               "stringData": {"password": "hunter2"}}),
    );
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    assert!(secret.get("stringData").is_none());

    let pvc = decode(
        &reg,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "p"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pvc["status"]["phase"], "Pending");

    let recreate = {
        let mut d = deployment();
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        decode(&reg, d)
    };
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));

    let rb = decode(
        &reg,
        json!({"apiVersion": "authorization/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
               "roleRef": {"apiGroup": "authorization", "kind": "Role", "name": "r"},
               "subjects": [{"kind": "User", "name": "alice"}]}),
    );
    assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
}

#[test]
fn kinds_decode_type_error_has_path() {
    let reg = registry();
    let mut d = deployment();
    d["spec"]["replicas"] = json!("three");
    let def = def_for(&reg, &d);
    let err = def.ops.decode(d.clone()).unwrap_err();
    assert_eq!(err.path, "spec.replicas");
    assert!(err.message.contains("invalid type"), "{}", err.message);

    let ship = json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": "s"},
                      "spec": {"image": "i", "shipClass": "c", "volumes": [{"name": 5}]}});
    let err = def_for(&reg, &ship).ops.decode(ship.clone()).unwrap_err();
    assert_eq!(err.path, "spec.volumes[0].name");

    let bad_meta = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"labels": []}});
    let err = def_for(&reg, &bad_meta)
        .ops
        .decode(bad_meta.clone())
        .unwrap_err();
    assert_eq!(err.path, "metadata.labels");

    let bad_selector = {
        let mut d = deployment();
        d["spec"]["selector"] = json!({"app": 3});
        d
    };
    let err = def_for(&reg, &bad_selector)
        .ops
        .decode(bad_selector.clone())
        .unwrap_err();
    assert_eq!(err.path, "spec.selector");
}

#[test]
fn kinds_validation_messages() {
    let reg = registry();
    let mut d = deployment();
    d["spec"]["replicas"] = json!(-1);
    d["spec"]["selector"] = json!({"app": "y"});
    let errs = errors(&reg, d);
    assert!(
        errs.contains(
            &"spec.replicas: Invalid value: -1: must be greater than or equal to 0".to_string()
        ),
        "{errs:?}"
    );
    assert!(errs.contains(&"spec.shipTemplate.metadata.labels: Invalid value: {\"app\":\"x\"}: `selector` does not match template `labels`".to_string()), "{errs:?}");

    let mut d = deployment();
    d["spec"]["selector"] = json!({"matchLabels": {"app": "x"}});
    assert!(errors(&reg, d).is_empty());

    let mut d = deployment();
    d["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
    assert_eq!(
        errors(&reg, d),
        vec!["spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"]
    );

    let ship = json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": "s"},
                      "spec": {"runStrategy": "Sometimes",
                               "volumes": [{"name": "a"}, {"name": "a", "secret": {"secretName": "s"}, "configMap": {"name": "c"}}]}});
    let errs = errors(&reg, ship);
    assert_eq!(
        errs,
        vec![
            "spec.image: Required value",
            "spec.shipClass: Required value",
            "spec.runStrategy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"Halted\", \"Manual\", \"RerunOnFailure\"",
            "spec.volumes[0]: Required value: must specify a volume type",
            "spec.volumes[1].name: Duplicate value: \"a\"",
            "spec.volumes[1].secret: Forbidden: may not specify more than 1 volume type",
        ]
    );

    let sc = json!({"apiVersion": "v1", "kind": "ShipClass", "metadata": {"name": "x"},
                    "spec": {"cpu": {"cores": 0}, "memory": {"size": "4GB"}}});
    let errs = errors(&reg, sc);
    assert!(
        errs.contains(&"spec.cpu.cores: Invalid value: 0: must be greater than 0".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("spec.memory.size: Invalid value: \"4GB\": quantities must match")),
        "{errs:?}"
    );

    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                        "data": {"ok": "aGk=", "bad": "!!!", "bad key": "aGk="}});
    let errs = errors(&reg, secret);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("data[bad]: Invalid value: \"<secret contents redacted>\""));
    assert!(errs[1].starts_with("data[bad key]: Invalid value: \"bad key\": a valid config key"));

    let rb = json!({"apiVersion": "authorization/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
                    "roleRef": {"apiGroup": "example.com", "kind": "Thing", "name": "r"},
                    "subjects": [{"kind": "Robot", "name": "r2"}]});
    assert_eq!(
        errors(&reg, rb),
        vec![
            "roleRef.apiGroup: Unsupported value: \"example.com\": supported values: \"authorization\", \"rbac.authorization.k8s.io\"",
            "roleRef.kind: Unsupported value: \"Thing\": supported values: \"Role\", \"ClusterRole\"",
            "subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
        ]
    );

    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
                      "rules": [{"resources": ["ships"], "verbs": []}]});
    assert_eq!(
        errors(&reg, role),
        vec![
            "rules[0].verbs: Required value: verbs must contain at least one value",
            "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
        ]
    );
}

#[test]
fn kinds_update_rules() {
    let reg = registry();
    let rb = json!({"apiVersion": "authorization/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
                    "roleRef": {"apiGroup": "authorization", "kind": "Role", "name": "r"}});
    let def = def_for(&reg, &rb).clone();
    let old = def.ops.decode(rb.clone()).unwrap();
    let mut same = rb.clone();
    same["roleRef"]["apiGroup"] = json!("rbac.authorization.k8s.io");
    assert!(def
        .ops
        .validate(&def.ops.decode(same).unwrap(), Some(&old))
        .is_empty());
    let mut changed = rb;
    changed["roleRef"]["name"] = json!("other");
    let errs = def
        .ops
        .validate(&def.ops.decode(changed).unwrap(), Some(&old));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].render().starts_with("roleRef: Invalid value: "));
    assert!(errs[0].render().ends_with(": cannot change roleRef"));

    let d = deployment();
    let def = def_for(&reg, &d).clone();
    let old = def.ops.decode(d.clone()).unwrap();
    let mut new = d;
    new["spec"]["selector"] = json!({"app": "x", "tier": "web"});
    new["spec"]["shipTemplate"]["metadata"]["labels"]["tier"] = json!("web");
    let errs = def.ops.validate(&def.ops.decode(new).unwrap(), Some(&old));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].render().ends_with("field is immutable"));

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                    "data": {"a": "1"}, "immutable": true});
    let def = def_for(&reg, &cm).clone();
    let old = def.ops.decode(cm.clone()).unwrap();
    let mut new = cm;
    new["data"]["a"] = json!("2");
    let errs = def.ops.validate(&def.ops.decode(new).unwrap(), Some(&old));
    assert_eq!(
        errs.iter().map(|e| e.render()).collect::<Vec<_>>(),
        vec!["data: Forbidden: field is immutable when `immutable` is set"]
    );
}

#[test]
fn kinds_tables() {
    let reg = registry();
    for def in reg.all() {
        let cols = def.ops.columns();
        let name_col = cols
            .iter()
            .find(|c| c.format == "name")
            .expect("name column");
        assert_eq!(name_col.name, "Name");
        assert_eq!(name_col.type_, "string");
        if def.kind != "Event" {
            assert_eq!(cols[0].format, "name", "{}", def.kind);
            assert_eq!(name_col.priority, 0);
        }
        // Undecodable stored objects still produce a row.
        assert_eq!(
            def.ops.cells(&json!({"spec": 5})).len(),
            cols.len(),
            "{}",
            def.kind
        );
    }
    let ship = decode(
        &reg,
        json!({"apiVersion": "v1", "kind": "Ship",
               "metadata": {"name": "s", "creationTimestamp": "2020-01-01T00:00:00Z"},
               "spec": {"image": "img", "shipClass": "small", "nodeName": "n1"},
               "status": {"phase": "Running", "ipAddresses": ["10.0.0.5"], "nodeName": "n1"}}),
    );
    let def = reg.get("", "v1", "ships").unwrap();
    let cells = def.ops.cells(&ship);
    assert_eq!(
        &cells[..5],
        &[
            json!("s"),
            json!("Running"),
            json!("n1"),
            json!("10.0.0.5"),
            json!("small")
        ]
    );
    assert!(cells[5].as_str().unwrap().contains('y'), "{}", cells[5]);
    assert_eq!(def.ops.field(&ship, "spec.nodeName").as_deref(), Some("n1"));
    assert_eq!(
        def.ops.field(&ship, "status.phase").as_deref(),
        Some("Running")
    );
    assert_eq!(
        def.ops.field(&ship, "spec.runtimeClass").as_deref(),
        Some("")
    );
    assert_eq!(def.ops.field(&ship, "spec.image"), None);

    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "tugboat.io/role": "worker"}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "allocatable": {"cpu": "4", "memory": "8Gi"}, "shipCount": 3,
                   "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}],
                   "nodeInfo": {"kubeletVersion": "v0.1.0", "osImage": "Debian", "kernelVersion": "6.1"},
                   "cniPlugins": [{"name": "bridge", "ready": true}]}});
    let def = reg.get("", "v1", "nodes").unwrap();
    let node = def.ops.decode(node).unwrap();
    let cells = def.ops.cells(&node);
    assert_eq!(cells[1], "Ready,SchedulingDisabled");
    assert_eq!(cells[2], "control-plane,worker");
    assert_eq!(cells[3], "3");
    assert_eq!(cells[4], "4");
    assert_eq!(cells[5], "8Gi");
    assert_eq!(cells[7], "192.168.1.2");
    assert_eq!(
        def.ops.field(&node, "spec.unschedulable").as_deref(),
        Some("true")
    );
    assert_eq!(
        def.ops
            .field(&json!({"metadata": {"name": "x"}}), "spec.unschedulable")
            .as_deref(),
        Some("false")
    );

    let d = decode(&reg, deployment());
    let def = reg.get("apps", "v1", "deployments").unwrap();
    let cells = def.ops.cells(&d);
    assert_eq!(cells[1], "0/1");
    assert_eq!(cells[6], "app=x");

    let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Ship", "name": "s", "namespace": "default"},
        "reason": "Scheduled", "type": "Normal", "message": "assigned to n1 ",
        "lastTimestamp": "2020-01-01T00:00:00Z"});
    let def = reg.get("", "v1", "events").unwrap();
    let ev = def.ops.decode(ev).unwrap();
    let cells = def.ops.cells(&ev);
    assert_eq!(
        &cells[1..4],
        &[json!("Normal"), json!("Scheduled"), json!("ship/s")]
    );
    assert_eq!(cells[6], "assigned to n1");
    assert_eq!(
        def.ops.field(&ev, "involvedObject.name").as_deref(),
        Some("s")
    );
    assert_eq!(def.ops.field(&ev, "reason").as_deref(), Some("Scheduled"));
}

#[test]
fn kinds_registry_shape() {
    let reg = registry();
    let names: Vec<String> = reg.all().iter().map(|d| d.qualified()).collect();
    for q in [
        "namespaces",
        "nodes",
        "ships",
        "shipclasses",
        "runtimeclasses",
        "networkclasses",
        "clusternetworkclasses",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "persistentvolumes",
        "persistentvolumeclaims",
        "storageclasses",
        "events",
        "deployments.apps",
        "replicasets.apps",
        "fleets.apps",
        "roles.authorization",
        "clusterroles.authorization",
        "rolebindings.authorization",
        "clusterrolebindings.authorization",
        "roles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "leases.coordination",
    ] {
        assert!(names.contains(&q.to_string()), "{q}");
    }
    let ship = reg.get("", "v1", "ships").unwrap();
    assert!(ship.namespaced && ship.status && ship.categories == ["all"]);
    assert_eq!(ship.storage, "core/ships");
    assert!(reg
        .get("apps", "v1", "deployments")
        .unwrap()
        .scale
        .is_some());
    assert!(!reg.get("", "v1", "shipclasses").unwrap().namespaced);
    let mut seen = std::collections::BTreeSet::new();
    for d in reg.all() {
        for s in d.short_names {
            assert!(seen.insert(*s), "duplicate short name {s}");
        }
    }
}
