//! The real `kubectl` (1.32) against the apiserver that `tugboatd run` serves on `--api-listen`.
//!
//! One scenario, [`run_suite`], runs twice: against a `tugboatd` on its own store, and against a
//! `tugboatd` whose apiserver keeps its objects in Debian's etcd 3.4 (`--etcd-endpoints`).
//!
//! The scenario is split into sections. A failing section is recorded and the next one runs, so
//! one run reports every broken area at once; the test fails at the end listing them all. Most
//! sections work on their own objects (the `kubectl-e2e` namespace holds most of them), so an
//! early failure cascades as little as possible.
//!
//! Commands are written as shell-like strings (`'…'` groups an argument, see
//! [`split_args`]). Nothing is timing-sensitive: waits poll with generous deadlines and watch
//! output is awaited line by line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use tugboat_testsuite::kube::{
    raw_request, split_args, wait_api_ready, write_token_kubeconfig, Kubectl, KubectlChild,
    RawResponse,
};
use tugboat_testsuite::{CmdOutput, EtcdNode, EtcdOptions, TugboatNode, TugboatOptions};

const IMAGE: &str = "ghcr.io/sileader/tugboat-vm-images/ubuntu:24.04";
/// Namespace most sections work in.
const NS: &str = "kubectl-e2e";
/// Deadline for a watch line or a polled condition.
const WAIT: Duration = Duration::from_secs(30);

fn manifest(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(file);
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Small panicking helpers (a panic fails the current section only).

fn argv(cmd: &str) -> Vec<String> {
    split_args(cmd)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn run(k: &Kubectl, cmd: &str) -> CmdOutput {
    k.run(&refs(&argv(cmd))).unwrap_or_else(|e| panic!("{e}"))
}

fn ok(k: &Kubectl, cmd: &str) -> String {
    k.ok(&refs(&argv(cmd))).unwrap_or_else(|e| panic!("{e}"))
}

fn ok_in(k: &Kubectl, cmd: &str, stdin: &str) -> String {
    k.ok_stdin(&refs(&argv(cmd)), stdin)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn fail(k: &Kubectl, cmd: &str) -> CmdOutput {
    k.fail(&refs(&argv(cmd))).unwrap_or_else(|e| panic!("{e}"))
}

fn fail_in(k: &Kubectl, cmd: &str, stdin: &str) -> CmdOutput {
    k.fail_stdin(&refs(&argv(cmd)), stdin)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `cmd -o jsonpath=TEMPLATE`.
fn jp(k: &Kubectl, cmd: &str, template: &str) -> String {
    k.jsonpath(&refs(&argv(cmd)), template)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `cmd -o json`, parsed.
fn json_of(k: &Kubectl, cmd: &str) -> Value {
    k.json(&refs(&argv(cmd))).unwrap_or_else(|e| panic!("{e}"))
}

/// `cmd -o name`, one entry per line, sorted.
fn names(k: &Kubectl, cmd: &str) -> Vec<String> {
    let mut v: Vec<String> = ok(k, &format!("{cmd} -o name"))
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `kubectl auth can-i ARGS`: its answer (`yes`/`no`), checking the exit code agrees.
fn can_i(k: &Kubectl, args: &str) -> String {
    let out = run(k, &format!("auth can-i {args}"));
    let answer = out.stdout.trim().to_string();
    assert!(
        (answer == "yes" && out.success()) || (answer == "no" && out.status.code() == Some(1)),
        "auth can-i {args}: exit {} stdout {:?} stderr {:?}",
        out.status,
        out.stdout,
        out.stderr
    );
    answer
}

fn svec(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[track_caller]
fn assert_contains(hay: &str, needle: &str, what: &str) {
    assert!(
        hay.contains(needle),
        "{what}: expected to find {needle:?} in:\n{hay}"
    );
}

#[track_caller]
fn assert_stderr(out: &CmdOutput, needle: &str, what: &str) {
    assert!(
        out.stderr.contains(needle),
        "{what}: expected stderr to contain {needle:?}; exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Polls `f` every 200 ms until it returns Some, panicking after `deadline`.
fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= deadline {
            panic!("{what}: not reached within {deadline:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Whitespace-split rows of a table printed by kubectl (header included unless --no-headers).
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn header(out: &str) -> Vec<String> {
    rows(out).into_iter().next().unwrap_or_default()
}

fn first_col(out: &str) -> Vec<String> {
    rows(out)
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect()
}

fn row_of<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{out}"))
}

fn ship_yaml(ns: &str, name: &str, labels: &[(&str, &str)], image: &str) -> String {
    let mut s =
        format!("apiVersion: v1\nkind: Ship\nmetadata:\n  name: {name}\n  namespace: {ns}\n");
    if !labels.is_empty() {
        s.push_str("  labels:\n");
        for (k, v) in labels {
            s.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    s.push_str(&format!(
        "spec:\n  image: {image}\n  shipClass: lightweight\n"
    ));
    s
}

fn ship_yaml_json(ns: &str, name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": name, "namespace": ns},
           "spec": {"image": "img", "shipClass": "lightweight"}})
    .to_string()
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string panic>".into()
    }
}

/// (EVENT, NAME) of each line of `get -w --output-watch-events --no-headers`.
fn watch_rows(child: &KubectlChild) -> Vec<(String, String)> {
    child
        .received()
        .iter()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

fn wait_event(child: &mut KubectlChild, ty: &str, name: &str) {
    let want = format!("{ty} {name}");
    let res = child.wait_for_line(0, &want, WAIT, |l| {
        let mut it = l.split_whitespace();
        it.next() == Some(ty) && it.next() == Some(name)
    });
    if let Err(e) = res {
        panic!("{e}");
    }
}

/// Parses a stream of (pretty-printed) JSON values as `kubectl get -w -o json` prints them.
fn json_stream(lines: &[String]) -> Vec<Value> {
    let text = lines.join("\n");
    serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map_while(|r| r.ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------

struct Suite<'a> {
    node: &'a TugboatNode,
    k: Kubectl,
    tmp: TempDir,
    passed: Vec<&'static str>,
    failures: Vec<String>,
}

impl<'a> Suite<'a> {
    fn section(&mut self, name: &'static str, f: impl FnOnce(&mut Suite<'a>)) {
        let start = Instant::now();
        eprintln!("=== section {name}");
        match catch_unwind(AssertUnwindSafe(|| f(&mut *self))) {
            Ok(()) => {
                eprintln!("--- section {name}: ok ({:?})", start.elapsed());
                self.passed.push(name);
            }
            Err(p) => {
                let msg = panic_message(p);
                eprintln!("--- section {name}: FAILED ({:?})", start.elapsed());
                self.failures.push(format!("[{name}] {msg}"));
            }
        }
    }

    /// Writes a file into the suite's temp dir and returns its path.
    fn file(&self, name: &str, content: &str) -> String {
        let p = self.tmp.path().join(name);
        fs::write(&p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p.to_string_lossy().into_owned()
    }

    /// A shell script in the temp dir (for `EDITOR`).
    fn script(&self, name: &str, body: &str) -> String {
        let p = self.file(name, &format!("#!/bin/sh\nset -e\n{body}\n"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {p}: {e}"));
        p
    }

    /// kubectl authenticated with a bearer token.
    fn with_token(&self, file: &str, token: &str) -> Kubectl {
        let p = self.tmp.path().join(file);
        write_token_kubeconfig(self.k.kubeconfig(), token, &p).unwrap_or_else(|e| panic!("{e}"));
        self.k.with_kubeconfig(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    /// kubectl with a client certificate from `tugboat kubeconfig --user USER [--group G]…`.
    fn with_user(&self, user: &str, groups: &[&str]) -> Kubectl {
        let url = self.node.api_url();
        let mut args = vec!["kubeconfig", "--server", url.as_str(), "--user", user];
        for g in groups {
            args.extend(["--group", g]);
        }
        let out = self.node.cli(&args).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.success(), "tugboat {args:?} failed: {}", out.stderr);
        let path = self.file(&format!("{user}.kubeconfig"), &out.stdout);
        self.k
            .with_kubeconfig(path)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The whole kubectl scenario against a node whose apiserver comes up.
fn run_suite(node: &TugboatNode) {
    if let Err(e) = wait_api_ready(node) {
        panic!("{e}");
    }
    let k = Kubectl::admin(node).unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::Builder::new()
        .prefix("kubectl-suite-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    let mut s = Suite {
        node,
        k,
        tmp,
        passed: Vec::new(),
        failures: Vec::new(),
    };
    let start = Instant::now();

    s.section("version and openapi", version);
    s.section("api-resources", api_resources);
    s.section("explain", explain);
    s.section("apply seed manifests", apply_seed);
    s.section("re-apply", reapply);
    s.section("get output formats", get_outputs);
    s.section("get selectors and sorting", get_selectors);
    s.section("get -w", watch);
    s.section("describe", describe);
    s.section("label and annotate", label_annotate);
    s.section("patch", patch);
    s.section("edit", edit);
    s.section("scale", scale);
    s.section("create, replace, conflicts, dry-run", create_replace);
    s.section("delete", delete);
    s.section("server-side apply", server_side_apply);
    s.section("auth as admin", auth_admin);
    s.section("auth as ServiceAccount bound to view", auth_service_account);
    s.section("auth through the seed RBAC objects", auth_seed_rbac);
    s.section("unauthenticated", unauthenticated);
    s.section("bad input: malformed bodies", bad_bodies);
    s.section("bad input: field validation", field_validation);
    s.section("bad input: wrong kinds", wrong_kinds);
    s.section("bad input: oversize body", oversize_body);
    s.section("bad input: selectors", bad_selectors);
    s.section("namespace deletion", namespace_deletion);

    eprintln!(
        "kubectl suite finished in {:?}: {} sections passed, {} failed",
        start.elapsed(),
        s.passed.len(),
        s.failures.len()
    );
    if !s.failures.is_empty() {
        panic!(
            "{} kubectl section(s) failed (passed: {:?}):\n\n{}",
            s.failures.len(),
            s.passed,
            s.failures.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sections

fn version(s: &mut Suite) {
    let v = json_of(&s.k, "version");
    let git = v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    let core = git
        .strip_prefix('v')
        .unwrap_or_else(|| panic!("gitVersion {git:?}: {v}"));
    let parts: Vec<&str> = core.split(['.', '-', '+']).take(3).collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()),
        "gitVersion {git:?} is not semver"
    );
    assert_contains(
        &ok(&s.k, "get --raw /version"),
        "gitVersion",
        "GET /version",
    );
    let openapi = ok(&s.k, "get --raw /openapi/v3");
    for p in [
        "api/v1",
        "apis/apps/v1",
        "apis/authorization/v1",
        "apis/coordination/v1",
    ] {
        assert_contains(&openapi, &format!("\"{p}\""), "/openapi/v3 index paths");
    }
}

fn api_resources(s: &mut Suite) {
    let out = ok(&s.k, "api-resources --no-headers");
    // NAME [SHORTNAMES] APIVERSION NAMESPACED KIND: parse from the right.
    let found: Vec<String> = rows(&out)
        .iter()
        .filter(|r| r.len() >= 4)
        .map(|r| {
            let n = r.len();
            format!("{} {} {} {}", r[0], r[n - 3], r[n - 2], r[n - 1])
        })
        .collect();
    let expected = [
        "namespaces v1 false Namespace",
        "nodes v1 false Node",
        "ships v1 true Ship",
        "shipclasses v1 false ShipClass",
        "runtimeclasses v1 false RuntimeClass",
        "networkclasses v1 true NetworkClass",
        "clusternetworkclasses v1 false ClusterNetworkClass",
        "configmaps v1 true ConfigMap",
        "secrets v1 true Secret",
        "serviceaccounts v1 true ServiceAccount",
        "persistentvolumes v1 false PersistentVolume",
        "persistentvolumeclaims v1 true PersistentVolumeClaim",
        "storageclasses v1 false StorageClass",
        "events v1 true Event",
        "deployments apps/v1 true Deployment",
        "replicasets apps/v1 true ReplicaSet",
        "fleets apps/v1 true Fleet",
        "roles authorization/v1 true Role",
        "clusterroles authorization/v1 false ClusterRole",
        "rolebindings authorization/v1 true RoleBinding",
        "clusterrolebindings authorization/v1 false ClusterRoleBinding",
        "roles rbac.authorization.k8s.io/v1 true Role",
        "clusterroles rbac.authorization.k8s.io/v1 false ClusterRole",
        "rolebindings rbac.authorization.k8s.io/v1 true RoleBinding",
        "clusterrolebindings rbac.authorization.k8s.io/v1 false ClusterRoleBinding",
        "leases coordination/v1 true Lease",
    ];
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|e| !found.iter().any(|f| f == e))
        .collect();
    assert!(
        missing.is_empty(),
        "kubectl api-resources lacks rows (NAME APIVERSION NAMESPACED KIND) {missing:?}; \
         it printed:\n{out}"
    );
    let apps = names(&s.k, "api-resources --api-group=apps");
    for r in ["deployments.apps", "fleets.apps", "replicasets.apps"] {
        assert!(
            apps.contains(&r.to_string()),
            "api-resources --api-group=apps: {apps:?}"
        );
    }
    let versions = ok(&s.k, "api-versions");
    for v in [
        "v1",
        "apps/v1",
        "authorization/v1",
        "rbac.authorization.k8s.io/v1",
        "coordination/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == v),
            "api-versions lacks {v}:\n{versions}"
        );
    }
}

/// Checks an `explain` page: KIND/VERSION/FIELD header and a non-empty DESCRIPTION.
#[track_caller]
fn assert_explain_page(out: &str, group: &str, kind: &str, version: &str, field: &str) {
    let value = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .map(|l| l[key.len()..].trim().to_string())
    };
    // kubectl prints GROUP only for named groups.
    let want_group = (!group.is_empty()).then(|| group.to_string());
    assert_eq!(value("GROUP:"), want_group, "explain GROUP:\n{out}");
    assert_eq!(
        value("KIND:").as_deref(),
        Some(kind),
        "explain KIND:\n{out}"
    );
    assert_eq!(
        value("VERSION:").as_deref(),
        Some(version),
        "explain VERSION:\n{out}"
    );
    assert!(
        value("FIELD:").is_some_and(|f| f.starts_with(field)),
        "explain FIELD should name {field:?}:\n{out}"
    );
    let desc = out
        .split("DESCRIPTION:")
        .nth(1)
        .map(|rest| rest.split("FIELDS:").next().unwrap_or(""))
        .unwrap_or("");
    assert!(
        desc.trim().len() > 10 && !desc.contains("<empty>"),
        "explain should print the field's documentation under DESCRIPTION:\n{out}"
    );
}

fn explain(s: &mut Suite) {
    let out = ok(&s.k, "explain ship.spec");
    assert_explain_page(&out, "", "Ship", "v1", "spec");
    let fields = out
        .split("FIELDS:")
        .nth(1)
        .unwrap_or_else(|| panic!("no FIELDS: in\n{out}"));
    for f in [
        "image",
        "shipClass",
        "runStrategy",
        "volumes",
        "runtimeClass",
    ] {
        assert!(
            fields
                .lines()
                .any(|l| l.split_whitespace().next() == Some(f)),
            "explain ship.spec lists no field {f:?}:\n{out}"
        );
    }
    let out = ok(&s.k, "explain ship.spec.runStrategy");
    assert_explain_page(&out, "", "Ship", "v1", "runStrategy");
    assert_contains(&out, "<string>", "runStrategy is a string");
    for v in ["Always", "Halted", "Manual", "RerunOnFailure"] {
        assert_contains(
            &out,
            v,
            "explain ship.spec.runStrategy names the allowed values",
        );
    }
    let out = ok(&s.k, "explain fleets.spec.components");
    assert_explain_page(&out, "apps", "Fleet", "v1", "components");
    assert_contains(&out, "shipTemplate", "explain fleets.spec.components");
}

const SEED: &[(&str, &str)] = &[
    ("01-shipclass.yaml", "shipclass/lightweight"),
    ("02-runtimeclass.yaml", "runtimeclass/standard"),
    ("03-ship.yaml", "ship/ship"),
    ("04-fleet.yaml", "fleet.apps/my-fleet"),
    ("05-deployment.yaml", "deployment.apps/my-deployment"),
    ("06-replicaset.yaml", "replicaset.apps/my-replicaset"),
    (
        "07-serviceaccount.yaml",
        "serviceaccount/my-service-account",
    ),
    ("08-role.yaml", "role.authorization/ship-reader"),
    (
        "09-clusterrole.yaml",
        "clusterrole.authorization/node-reader",
    ),
    (
        "10-rolebinding.yaml",
        "rolebinding.authorization/ship-reader-binding",
    ),
    (
        "11-clusterrolebinding.yaml",
        "clusterrolebinding.authorization/node-reader-binding",
    ),
];

/// (object, jsonpath, expected) checks that the stored seed objects say what the manifests say.
const SEED_FIELDS: &[(&str, &str, &str)] = &[
    ("shipclass lightweight", "{.spec.memory.size}", "4Gi"),
    ("shipclass lightweight", "{.spec.cpu.cores}", "2"),
    ("shipclass lightweight", "{.spec.cpu.architecture}", "x64"),
    ("runtimeclass standard", "{.spec.liveMigration}", "true"),
    (
        "runtimeclass standard",
        "{.spec.hotplug.nic.remove}",
        "true",
    ),
    (
        "runtimeclass standard",
        "{.spec.hotplug.cpu.remove}",
        "false",
    ),
    (
        "ship ship",
        "{.spec.volumes[0].persistentVolumeClaim.claimName}",
        "data-disk",
    ),
    (
        "ship ship",
        "{.spec.volumes[1].configMap.name}",
        "app-config",
    ),
    (
        "ship ship",
        "{.spec.volumes[2].secret.secretName}",
        "app-secret",
    ),
    ("ship ship", "{.spec.runStrategy}", "Always"),
    ("fleet my-fleet", "{.spec.components[1].replicas}", "3"),
    (
        "fleet my-fleet",
        "{.spec.components[0].shipTemplate.metadata.labels.role}",
        "frontend",
    ),
    (
        "fleet my-fleet",
        "{.spec.networkClassName}",
        "my-network-class",
    ),
    ("deployment my-deployment", "{.spec.selector.app}", "my-app"),
    (
        "deployment my-deployment",
        "{.spec.shipTemplate.spec.shipClass}",
        "lightweight",
    ),
    ("replicaset my-replicaset", "{.spec.replicas}", "2"),
    (
        "roles.authorization ship-reader",
        "{.rules[0].verbs}",
        r#"["get","list","watch"]"#,
    ),
    (
        "roles.rbac.authorization.k8s.io ship-reader",
        "{.rules[0].resources[0]}",
        "ships",
    ),
    (
        "clusterrolebindings.rbac.authorization.k8s.io node-reader-binding",
        "{.subjects[0].name}",
        "ops-team",
    ),
    (
        "rolebindings.authorization ship-reader-binding",
        "{.subjects[1].kind}",
        "ServiceAccount",
    ),
    (
        "rolebindings.authorization ship-reader-binding",
        "{.roleRef.apiGroup}",
        "authorization",
    ),
    ("configmap app-config", "{.data.greeting}", "hello"),
    ("secret app-secret", "{.data.password}", "czNjcmV0"),
];

fn apply_seed(s: &mut Suite) {
    let mut errors = Vec::new();
    for (file, object) in SEED {
        match s.k.ok(&["apply", "-f", &manifest(file)]) {
            Ok(out) if out.trim() == format!("{object} created") => {}
            Ok(out) => errors.push(format!(
                "apply -f {file}: expected `{object} created`, got {out:?}"
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(errors.is_empty(), "seed manifests:\n{}", errors.join("\n"));

    let extra = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\n  namespace: default\n\
         data:\n  greeting: hello\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secret\n  namespace: default\n\
         type: Opaque\nstringData:\n  password: s3cret\n"
    );
    let out = ok_in(&s.k, "apply -f -", &extra);
    let want = [
        format!("namespace/{NS} created"),
        "configmap/app-config created".into(),
        "secret/app-secret created".into(),
    ];
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        want,
        "apply of a Namespace, ConfigMap, Secret"
    );

    for (object, tmpl, want) in SEED_FIELDS {
        let scope = if object.starts_with("shipclass")
            || object.starts_with("runtimeclass")
            || object.starts_with("clusterrolebindings")
        {
            ""
        } else {
            "-n default"
        };
        match s
            .k
            .jsonpath(&refs(&argv(&format!("get {object} {scope}"))), tmpl)
        {
            Ok(got) if got == *want => {}
            Ok(got) => errors.push(format!(
                "get {object} {tmpl}: expected {want:?}, got {got:?}"
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(
        errors.is_empty(),
        "stored objects differ from the manifests:\n{}",
        errors.join("\n")
    );
}

/// `KIND/NAME=RESOURCEVERSION` of every object in the manifests directory.
fn seed_versions(k: &Kubectl, dir: &Path) -> Vec<String> {
    let tmpl =
        "{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}";
    let out = jp(k, &format!("get -f '{}'", dir.display()), tmpl);
    out.lines().map(str::to_string).collect()
}

fn reapply(s: &mut Suite) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let before = seed_versions(&s.k, &dir);
    let out = ok(&s.k, &format!("apply -f '{}'", dir.display()));
    let after = seed_versions(&s.k, &dir);
    // The server defaults fields inside list items of these (Fleet components' shipTemplate,
    // binding subjects' apiGroup); kubectl's three-way merge patch replaces whole lists, so it
    // sends a patch and says "configured". The patch must not change the object, though.
    let defaulted_in_lists = [
        "fleet.apps/",
        "rolebinding.authorization/",
        "clusterrolebinding.authorization/",
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), SEED.len(), "one line per manifest:\n{out}");
    for ((_, object), line) in SEED.iter().zip(&lines) {
        let unchanged = format!("{object} unchanged");
        let configured = format!("{object} configured");
        let may_configure = defaulted_in_lists.iter().any(|p| object.starts_with(p));
        assert!(
            *line == unchanged || (may_configure && *line == configured),
            "re-applying the unchanged manifests: expected {unchanged:?}, got {line:?}\n{out}"
        );
    }
    let mut deferred = Vec::new();
    if before != after {
        deferred.push(format!(
            "re-applying unchanged manifests must not write (no-op patches keep \
             resourceVersion):\nbefore {before:?}\nafter  {after:?}"
        ));
    }

    // A changed Ship (a merge patch: kubectl does not know the kind).
    let seed_ship = fs::read_to_string(manifest("03-ship.yaml")).unwrap_or_default();
    let changed = seed_ship.replace(
        "  name: ship\n",
        "  name: ship\n  labels:\n    stage: test\n",
    );
    assert_ne!(changed, seed_ship);
    assert_eq!(
        ok_in(&s.k, "apply -f -", &changed).trim(),
        "ship/ship configured"
    );
    assert_eq!(
        jp(&s.k, "get ship ship", "{.metadata.labels.stage}"),
        "test"
    );
    assert_eq!(
        ok_in(&s.k, "apply -f -", &changed).trim(),
        "ship/ship unchanged"
    );

    // A changed Deployment (a strategic merge patch: kubectl knows apps/v1 Deployment).
    let seed_dep = fs::read_to_string(manifest("05-deployment.yaml")).unwrap_or_default();
    let changed = seed_dep.replace(
        "  name: my-deployment\n",
        "  name: my-deployment\n  annotations:\n    owner: e2e\n",
    );
    let dep = "deployment.apps/my-deployment";
    assert_eq!(
        ok_in(&s.k, "apply -f -", &changed).trim(),
        format!("{dep} configured")
    );
    assert_eq!(
        jp(
            &s.k,
            "get deployment my-deployment",
            "{.metadata.annotations.owner}"
        ),
        "e2e"
    );
    assert_eq!(
        jp(
            &s.k,
            "get deployment my-deployment",
            "{.spec.shipTemplate.metadata.labels.app}"
        ),
        "my-app",
        "strategic merge must not drop the template labels"
    );
    // Dropping a field from the manifest removes it (three-way diff with last-applied).
    let out = ok(
        &s.k,
        &format!("apply -f {}", manifest("05-deployment.yaml")),
    );
    assert_eq!(out.trim(), format!("{dep} configured"));
    assert_eq!(
        jp(
            &s.k,
            "get deployment my-deployment",
            "{.metadata.annotations.owner}"
        ),
        "",
        "apply of the manifest without the annotation removes it"
    );
    let last = jp(
        &s.k,
        "get ship ship",
        "{.metadata.annotations.kubectl\\.kubernetes\\.io/last-applied-configuration}",
    );
    assert_contains(
        &last,
        "\"shipClass\":\"lightweight\"",
        "last-applied-configuration",
    );
    assert!(deferred.is_empty(), "{}", deferred.join("\n"));
}

/// Creates (or keeps) the three labelled Ships of `kubectl-e2e` the get sections use.
fn ensure_e2e_ships(s: &Suite) {
    let docs = [
        ship_yaml(
            NS,
            "web-2",
            &[("app", "other-app"), ("tier", "web")],
            "img-a",
        ),
        ship_yaml(NS, "web-1", &[("app", "my-app"), ("tier", "web")], "img-c"),
        ship_yaml(NS, "alpha", &[], "img-b"),
    ]
    .join("---\n");
    ok_in(&s.k, "apply -f -", &docs);
}

fn get_outputs(s: &mut Suite) {
    ensure_e2e_ships(s);
    let k = &s.k;
    let out = ok(k, &format!("get ships -n {NS}"));
    let cols = svec(&["NAME", "PHASE", "NODE", "IP", "CLASS", "AGE"]);
    assert_eq!(header(&out), cols, "Ship table columns:\n{out}");
    assert_eq!(rows(&out).len(), 4, "3 Ships and a header:\n{out}");
    let web1 = row_of(&out, "web-1");
    assert_eq!(
        web1.split_whitespace().nth(1),
        Some("Pending"),
        "PHASE of a new Ship:\n{out}"
    );
    assert_contains(web1, "lightweight", "CLASS column");

    let out = ok(k, &format!("get ships -n {NS} -o wide"));
    let wide = header(&out);
    let mut sorted = wide.clone();
    sorted.sort();
    let mut want = svec(&[
        "NAME",
        "PHASE",
        "NODE",
        "IP",
        "CLASS",
        "AGE",
        "IMAGE",
        "RUNTIMECLASS",
    ]);
    want.sort();
    assert_eq!(sorted, want, "-o wide columns:\n{out}");
    let base: Vec<String> = wide
        .into_iter()
        .filter(|c| c != "IMAGE" && c != "RUNTIMECLASS")
        .collect();
    assert_eq!(
        base, cols,
        "-o wide keeps the default columns in order:\n{out}"
    );
    assert_contains(row_of(&out, "web-1"), "img-c", "IMAGE column with -o wide");

    let yaml = ok(k, "get ship ship -n default -o yaml");
    for needle in [
        "apiVersion: v1",
        "kind: Ship",
        "  name: ship",
        "  namespace: default",
    ] {
        assert_contains(&yaml, needle, "get -o yaml");
    }
    assert_contains(&yaml, &format!("image: {IMAGE}"), "get -o yaml");

    let obj = json_of(k, "get ship ship -n default");
    let meta = &obj["metadata"];
    assert_eq!(
        (&obj["apiVersion"], &obj["kind"]),
        (&json!("v1"), &json!("Ship")),
        "{obj}"
    );
    assert_eq!(meta["name"], "ship");
    assert!(
        meta["uid"].as_str().is_some_and(|u| u.len() >= 8),
        "uid: {obj}"
    );
    let rv = meta["resourceVersion"].as_str().unwrap_or("");
    assert!(
        rv.parse::<u64>().is_ok(),
        "resourceVersion is a decimal string: {obj}"
    );
    let created = meta["creationTimestamp"].as_str().unwrap_or("");
    assert!(created.ends_with('Z'), "creationTimestamp: {obj}");
    assert!(
        meta["generation"].as_i64().is_some_and(|g| g >= 1),
        "generation: {obj}"
    );
    assert_eq!(
        obj["spec"]["runStrategy"], "Always",
        "runStrategy defaults to Always"
    );
    assert_eq!(obj["spec"]["volumes"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        obj["status"]["phase"], "Pending",
        "a new Ship is Pending: {obj}"
    );

    let list = json_of(k, &format!("get ships -n {NS}"));
    assert_eq!(list["kind"], "List", "{list}");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3, "{list}");
    assert!(items.iter().all(|i| i["kind"] == "Ship"), "{list}");

    let three = svec(&["ship/alpha", "ship/web-1", "ship/web-2"]);
    assert_eq!(names(k, &format!("get ships -n {NS}")), three);
    assert_eq!(
        names(k, &format!("get ships -n {NS} --chunk-size=1")),
        three,
        "limit + continue"
    );
    let several = names(k, "get ships,deployments,configmaps -n default");
    for n in [
        "configmap/app-config",
        "deployment.apps/my-deployment",
        "ship/ship",
    ] {
        assert!(
            several.contains(&n.to_string()),
            "get of several types: {several:?} lacks {n}"
        );
    }

    let out = ok(k, "get ships -A");
    assert_eq!(
        header(&out).get(..2),
        Some(&svec(&["NAMESPACE", "NAME"])[..]),
        "-A:\n{out}"
    );
    let pairs: Vec<String> = rows(&out)
        .iter()
        .skip(1)
        .filter(|r| r.len() >= 2)
        .map(|r| r[..2].join("/"))
        .collect();
    for want in ["default/ship", "kubectl-e2e/web-1", "kubectl-e2e/alpha"] {
        assert!(
            pairs.contains(&want.to_string()),
            "get ships -A lacks {want}:\n{out}"
        );
    }
    let out = ok(k, "get shipclasses");
    assert_eq!(
        first_col(&out),
        svec(&["NAME", "lightweight"]),
        "cluster-scoped get:\n{out}"
    );
}

fn get_selectors(s: &mut Suite) {
    ensure_e2e_ships(s);
    let k = &s.k;
    let sel = |sel: &str| names(k, &format!("get ships -n {NS} -l '{sel}'"));
    assert_eq!(sel("app=my-app"), svec(&["ship/web-1"]), "-l app=my-app");
    assert_eq!(sel("app==my-app"), svec(&["ship/web-1"]), "-l app==my-app");
    assert_eq!(
        sel("app in (my-app)"),
        svec(&["ship/web-1"]),
        "-l 'app in (my-app)'"
    );
    assert_eq!(
        sel("app in (my-app,other-app)"),
        svec(&["ship/web-1", "ship/web-2"]),
        "in"
    );
    assert_eq!(
        sel("app notin (my-app)"),
        svec(&["ship/alpha", "ship/web-2"]),
        "notin"
    );
    assert_eq!(
        sel("app!=my-app,tier=web"),
        svec(&["ship/web-2"]),
        "!= and ="
    );
    assert_eq!(sel("app"), svec(&["ship/web-1", "ship/web-2"]), "exists");
    assert_eq!(sel("!app"), svec(&["ship/alpha"]), "!key");
    let none = run(k, &format!("get ships -n {NS} -l app=nothing"));
    assert!(
        none.success() && none.stdout.trim().is_empty(),
        "empty result: {}",
        none.stderr
    );
    assert_stderr(
        &none,
        &format!("No resources found in {NS} namespace."),
        "empty list",
    );

    let fsel = |sel: &str| names(k, &format!("get ships {sel}"));
    let three = svec(&["ship/alpha", "ship/web-1", "ship/web-2"]);
    assert_eq!(
        fsel("-n default --field-selector metadata.name=ship"),
        svec(&["ship/ship"])
    );
    assert_eq!(
        fsel(&format!("-n {NS} --field-selector status.phase=Pending")),
        three
    );
    assert_eq!(
        fsel(&format!("-n {NS} --field-selector status.phase=Running")),
        svec(&[])
    );
    assert_eq!(
        fsel(&format!("-n {NS} --field-selector metadata.name!=alpha")),
        svec(&["ship/web-1", "ship/web-2"])
    );
    assert_eq!(
        fsel(&format!("-A --field-selector metadata.namespace={NS}")),
        three
    );
    assert_eq!(
        fsel(&format!(
            "-n {NS} -l tier=web --field-selector metadata.name=web-2"
        )),
        svec(&["ship/web-2"]),
        "label and field selector together"
    );

    let out = ok(k, &format!("get ships -n {NS} --show-labels"));
    assert_eq!(
        header(&out).last().map(String::as_str),
        Some("LABELS"),
        "--show-labels:\n{out}"
    );
    let labels = row_of(&out, "web-1")
        .split_whitespace()
        .last()
        .unwrap_or("");
    let mut got: Vec<&str> = labels.split(',').collect();
    got.sort();
    assert_eq!(got, vec!["app=my-app", "tier=web"], "--show-labels:\n{out}");
    assert_eq!(
        row_of(&out, "alpha").split_whitespace().last(),
        Some("<none>")
    );

    let sorted = |by: &str| {
        first_col(&ok(
            k,
            &format!("get ships -n {NS} --sort-by={by} --no-headers"),
        ))
    };
    assert_eq!(
        sorted(".metadata.name"),
        svec(&["alpha", "web-1", "web-2"]),
        "--sort-by name"
    );
    assert_eq!(
        sorted(".spec.image"),
        svec(&["web-2", "alpha", "web-1"]),
        "--sort-by=.spec.image (the Table must carry objects with includeObject=Object)"
    );
}

fn watch(s: &mut Suite) {
    let k = &s.k;
    let ns = "kubectl-watch";
    ok(k, &format!("create namespace {ns}"));
    ok_in(k, "create -f -", &ship_yaml(ns, "w1", &[], IMAGE));

    let spawn = |cmd: &str| k.spawn(&refs(&argv(cmd))).unwrap_or_else(|e| panic!("{e}"));
    let mut table = spawn(&format!(
        "get ships -n {ns} -w --output-watch-events --no-headers"
    ));
    let mut raw = spawn(&format!(
        "get ships -n {ns} -w --output-watch-events -o json"
    ));
    wait_event(&mut table, "ADDED", "w1");
    // The JSON watch has printed the initial object before anything changes.
    raw.wait_for_line(0, "the initial ADDED event", WAIT, |l| {
        l.contains("\"ADDED\"")
    })
    .unwrap_or_else(|e| panic!("{e}"));

    ok_in(k, "create -f -", &ship_yaml(ns, "w2", &[], IMAGE));
    wait_event(&mut table, "ADDED", "w2");
    // A watch of one name (fieldSelector=metadata.name=w2).
    let mut single = spawn(&format!(
        "get ship w2 -n {ns} -w --output-watch-events --no-headers"
    ));
    wait_event(&mut single, "ADDED", "w2");

    assert_eq!(
        ok(k, &format!("label ship w1 -n {ns} color=blue")).trim(),
        "ship/w1 labeled"
    );
    wait_event(&mut table, "MODIFIED", "w1");
    assert_eq!(
        ok(k, &format!("annotate ship w2 -n {ns} seen=yes")).trim(),
        "ship/w2 annotated"
    );
    wait_event(&mut table, "MODIFIED", "w2");
    wait_event(&mut single, "MODIFIED", "w2");
    assert_eq!(
        ok(k, &format!("delete ship w1 -n {ns}")).trim(),
        "ship \"w1\" deleted"
    );
    wait_event(&mut table, "DELETED", "w1");
    raw.wait_for_line(0, "a DELETED event", WAIT, |l| l.contains("\"DELETED\""))
        .unwrap_or_else(|e| panic!("{e}"));
    // Let the rest of the DELETED event's object arrive.
    let raw_lines = raw.drain_for(Duration::from_millis(500));

    let events = watch_rows(&table);
    let w1: Vec<&str> = events
        .iter()
        .filter(|(_, n)| n == "w1")
        .map(|(t, _)| t.as_str())
        .collect();
    assert!(
        w1.len() >= 3
            && w1[0] == "ADDED"
            && w1[w1.len() - 1] == "DELETED"
            && w1[1..w1.len() - 1].iter().all(|t| *t == "MODIFIED"),
        "events of w1 in the table watch should be ADDED, MODIFIED…, DELETED: {events:?}"
    );
    let single_events = watch_rows(&single);
    assert!(
        single_events.iter().all(|(_, n)| n == "w2"),
        "one-name watch: {single_events:?}"
    );

    let stream = json_stream(&raw_lines);
    let mut summary: Vec<String> = stream
        .iter()
        .map(|e| {
            let ty = e["type"].as_str().unwrap_or("?");
            format!(
                "{ty} {}",
                e["object"]["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let expected = [
        "ADDED w1",
        "ADDED w2",
        "MODIFIED w1",
        "MODIFIED w2",
        "DELETED w1",
    ];
    // A graceful deletion may add MODIFIED w1 (deletionTimestamp) right before DELETED w1.
    while summary.len() > expected.len() && summary[summary.len() - 2] == "MODIFIED w1" {
        let n = summary.len();
        summary.remove(n - 2);
    }
    assert_eq!(
        summary, expected,
        "JSON watch events (-o json --output-watch-events)"
    );
    let modified = &stream[2]["object"];
    assert_eq!(
        modified["metadata"]["labels"]["color"], "blue",
        "MODIFIED carries the new object"
    );
    assert_eq!(modified["kind"], "Ship");
    let rvs: Vec<u64> = stream
        .iter()
        .filter_map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        rvs.len(),
        stream.len(),
        "every event has a numeric resourceVersion: {stream:?}"
    );
    assert!(
        rvs.windows(2).all(|w| w[0] <= w[1]),
        "resourceVersions never go back: {rvs:?}"
    );
}

fn describe(s: &mut Suite) {
    let k = &s.k;
    let name_line = |out: &str, name: &str| {
        out.lines()
            .any(|l| l.starts_with("Name:") && l.trim_end().ends_with(name))
    };
    let out = ok(k, "describe ship ship -n default");
    assert!(name_line(&out, "ship"), "describe ship Name line:\n{out}");
    for needle in ["Namespace:", "Kind:", "Ship", IMAGE, "lightweight"] {
        assert_contains(&out, needle, "describe ship");
    }
    assert_contains(
        &out,
        "Events:",
        "describe ship lists events (events field selectors)",
    );

    let out = ok(k, "describe deployment my-deployment -n default");
    assert!(
        name_line(&out, "my-deployment"),
        "describe deployment Name line:\n{out}"
    );
    assert_contains(&out, "Replicas:", "describe deployment");
    assert_contains(&out, "desired", "describe deployment Replicas line");

    let out = ok(k, &format!("describe ships -n {NS} -l app=my-app"));
    assert_contains(&out, "web-1", "describe with a label selector");
    assert!(
        !out.contains("web-2"),
        "describe -l app=my-app shows only web-1:\n{out}"
    );

    let out = ok(
        k,
        "describe roles.rbac.authorization.k8s.io ship-reader -n default",
    );
    assert_contains(&out, "PolicyRule:", "RBAC describer for a role");
    assert_contains(&out, "ships", "RBAC describer lists the rule's resource");

    assert_contains(
        &ok(k, &format!("describe namespace {NS}")),
        "Active",
        "describe namespace",
    );
}

fn label_annotate(s: &mut Suite) {
    let k = &s.k;
    let get = |tmpl: &str| jp(k, "get ship ship -n default", tmpl);
    let g0 = get("{.metadata.generation}");
    assert_eq!(
        ok(k, "label ship ship -n default color=blue").trim(),
        "ship/ship labeled"
    );
    assert_eq!(get("{.metadata.labels.color}"), "blue");
    let refused = fail(k, "label ship ship -n default color=red");
    assert_stderr(
        &refused,
        "--overwrite is false",
        "label without --overwrite",
    );
    let out = ok(k, "label ship ship -n default color=red --overwrite");
    assert_eq!(out.trim(), "ship/ship labeled");
    assert_eq!(get("{.metadata.labels.color}"), "red");
    assert_eq!(
        ok(k, "label ship ship -n default color-").trim(),
        "ship/ship unlabeled"
    );
    assert_eq!(get("{.metadata.labels.color}"), "");
    let out = ok(k, "annotate ship ship -n default 'note=hello world'");
    assert_eq!(out.trim(), "ship/ship annotated");
    assert_eq!(get("{.metadata.annotations.note}"), "hello world");
    assert_eq!(
        get("{.metadata.generation}"),
        g0,
        "metadata changes do not bump generation"
    );

    ensure_e2e_ships(s);
    let k = &s.k;
    let mut out: Vec<String> = ok(k, &format!("label ships -n {NS} -l tier=web batch=1"))
        .lines()
        .map(Into::into)
        .collect();
    out.sort();
    assert_eq!(out, svec(&["ship/web-1 labeled", "ship/web-2 labeled"]));
    assert_eq!(
        names(k, &format!("get ships -n {NS} -l batch=1")),
        svec(&["ship/web-1", "ship/web-2"])
    );
}

fn patch(s: &mut Suite) {
    let k = &s.k;
    let get = |tmpl: &str| jp(k, "get ship ship -n default", tmpl);
    let patch = |args: &str| ok(k, &format!("patch ship ship -n default {args}"));
    let g0: i64 = get("{.metadata.generation}")
        .parse()
        .unwrap_or_else(|e| panic!("gen: {e}"));

    let out = patch(r#"--type merge -p '{"spec":{"runStrategy":"Halted"}}'"#);
    assert_eq!(out.trim(), "ship/ship patched");
    assert_eq!(get("{.spec.runStrategy}"), "Halted", "merge patch");
    assert_eq!(
        get("{.metadata.generation}"),
        (g0 + 1).to_string(),
        "spec change bumps generation"
    );

    let out = patch(
        r#"--type json -p '[{"op":"test","path":"/spec/shipClass","value":"lightweight"},
                            {"op":"replace","path":"/spec/runStrategy","value":"Manual"}]'"#,
    );
    assert_eq!(out.trim(), "ship/ship patched");
    assert_eq!(get("{.spec.runStrategy}"), "Manual", "JSON patch");
    let failed = fail(
        k,
        r#"patch ship ship -n default --type json
           -p '[{"op":"test","path":"/spec/shipClass","value":"heavy"},
                {"op":"replace","path":"/spec/runStrategy","value":"Always"}]'"#,
    );
    assert_stderr(&failed, "test", "a failing JSON-patch test op is refused");
    assert_eq!(
        get("{.spec.runStrategy}"),
        "Manual",
        "a failed JSON patch changes nothing"
    );

    let out = patch(r#"-p '{"spec":{"runStrategy":"RerunOnFailure"}}'"#);
    assert_eq!(out.trim(), "ship/ship patched");
    assert_eq!(
        get("{.spec.runStrategy}"),
        "RerunOnFailure",
        "strategic (default) patch"
    );
    patch(r#"--type strategic -p '{"metadata":{"labels":{"a":"1","b":"2"}}}'"#);
    patch(r#"--type strategic -p '{"metadata":{"labels":{"$patch":"replace","only":"this"}}}'"#);
    let labels: Value = serde_json::from_str(&get("{.metadata.labels}")).unwrap_or(Value::Null);
    assert_eq!(
        labels,
        json!({"only": "this"}),
        "strategic $patch: replace on a map"
    );

    let out = ok(
        k,
        r#"patch deployment my-deployment -n default --type strategic
           -p '{"spec":{"shipTemplate":{"metadata":{"labels":{"track":"stable"}}}}}'"#,
    );
    assert_eq!(out.trim(), "deployment.apps/my-deployment patched");
    let tmpl = "{.spec.shipTemplate.metadata.labels}";
    let labels = jp(k, "get deployment my-deployment -n default", tmpl);
    let labels: Value = serde_json::from_str(&labels).unwrap_or(Value::Null);
    assert_eq!(
        labels,
        json!({"app": "my-app", "track": "stable"}),
        "strategic merges maps"
    );

    let bad = fail(
        k,
        r#"patch ship ship -n default --type merge -p '{"spec":{"runStrategy":"Sometimes"}}'"#,
    );
    assert_stderr(
        &bad,
        "The Ship \"ship\" is invalid",
        "an invalid value is 422 Invalid",
    );
    assert_stderr(&bad, "spec.runStrategy", "422 names the field path");
    assert_eq!(get("{.spec.runStrategy}"), "RerunOnFailure");

    // status is written through /status only.
    let g1 = get("{.metadata.generation}");
    let out = patch(r#"--subresource=status --type merge -p '{"status":{"phase":"Running"}}'"#);
    assert_eq!(out.trim(), "ship/ship patched");
    assert_eq!(get("{.status.phase}"), "Running", "patch of /status");
    assert_eq!(
        get("{.metadata.generation}"),
        g1,
        "a status write does not bump generation"
    );
    patch(
        r#"--type merge -p '{"status":{"phase":"Failed"},"metadata":{"labels":{"via":"main"}}}'"#,
    );
    assert_eq!(get("{.metadata.labels.via}"), "main");
    assert_eq!(
        get("{.status.phase}"),
        "Running",
        "status in a main-resource patch is ignored"
    );

    // A patch that changes nothing writes nothing: same resourceVersion, no watch event.
    let rv = get("{.metadata.resourceVersion}");
    assert_eq!(
        patch("--type merge -p '{}'").trim(),
        "ship/ship patched (no change)"
    );
    patch(r#"--type merge -p '{"spec":{"runStrategy":"RerunOnFailure"}}'"#);
    assert_eq!(
        get("{.metadata.resourceVersion}"),
        rv,
        "a no-op patch keeps resourceVersion"
    );
}

fn edit(s: &mut Suite) {
    let yaml_editor = s.script(
        "editor.sh",
        "sed -i -e 's/runStrategy: [A-Za-z]*$/runStrategy: Halted/' \"$1\"",
    );
    let json_editor = s.script(
        "editor-json.sh",
        "sed -i -e 's/\"networkClassName\": \"[a-z-]*\"/\"networkClassName\": \"edited\"/' \"$1\"",
    );
    let cm_editor = s.script(
        "editor-cm.sh",
        "sed -i -e 's/^  greeting: hello$/  greeting: edited/' \"$1\"",
    );
    let k = &s.k;
    // Make sure the value differs from what the editor writes.
    ok(
        k,
        r#"patch ship ship -n default --type merge -p '{"spec":{"runStrategy":"Manual"}}'"#,
    );
    let editing = k.clone().with_env("EDITOR", yaml_editor);
    assert_eq!(
        ok(&editing, "edit ship ship -n default").trim(),
        "ship/ship edited"
    );
    let got = jp(k, "get ship ship -n default", "{.spec.runStrategy}");
    assert_eq!(got, "Halted", "edit through $EDITOR");

    let editing = k.clone().with_env("EDITOR", json_editor);
    // `-o json` is also the output format: kubectl prints the edited object.
    let out = ok(&editing, "edit fleet my-fleet -n default -o json");
    let printed: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(
        printed["spec"]["networkClassName"], "edited",
        "edit -o json prints: {out}"
    );
    let got = jp(
        k,
        "get fleet my-fleet -n default",
        "{.spec.networkClassName}",
    );
    assert_eq!(got, "edited", "edit -o json");

    // A kind kubectl knows (a strategic merge patch computed against its own ConfigMap type).
    // (`kubectl edit deployment` cannot work: kubectl diffs against its compiled-in
    // DeploymentSpec, which has no `shipTemplate`.)
    let editing = k.clone().with_env("EDITOR", cm_editor);
    let out = ok(&editing, "edit configmap app-config -n default");
    assert_eq!(out.trim(), "configmap/app-config edited");
    let got = jp(k, "get configmap app-config -n default", "{.data.greeting}");
    assert_eq!(got, "edited");
}

fn scale(s: &mut Suite) {
    let k = &s.k;
    let get = |tmpl: &str| jp(k, "get deployment my-deployment -n default", tmpl);
    let g0: i64 = get("{.metadata.generation}").parse().unwrap_or(0);
    let out = ok(k, "scale deployment my-deployment -n default --replicas=5");
    assert_eq!(out.trim(), "deployment.apps/my-deployment scaled");
    assert_eq!(get("{.spec.replicas}"), "5");
    let g1: i64 = get("{.metadata.generation}").parse().unwrap_or(0);
    assert!(g1 > g0, "scaling bumps generation ({g0} → {g1})");
    let raw = ok(
        k,
        "get --raw /apis/apps/v1/namespaces/default/deployments/my-deployment/scale",
    );
    let scale: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    assert_eq!(
        (&scale["kind"], &scale["spec"]["replicas"]),
        (&json!("Scale"), &json!(5)),
        "{raw}"
    );
    let refused = fail(
        k,
        "scale deployment my-deployment -n default --current-replicas=2 --replicas=3",
    );
    assert_stderr(
        &refused,
        "Expected replicas to be 2, was 5",
        "scale precondition",
    );
    let out = ok(k, "scale replicaset my-replicaset -n default --replicas=1");
    assert_eq!(out.trim(), "replicaset.apps/my-replicaset scaled");
    assert_eq!(
        jp(
            k,
            "get replicaset my-replicaset -n default",
            "{.spec.replicas}"
        ),
        "1"
    );
}

fn create_replace(s: &mut Suite) {
    ensure_e2e_ships(s);
    let k = &s.k;
    // Optimistic concurrency: a replace with a stale resourceVersion is a 409.
    let mut stale = json_of(k, &format!("get ship alpha -n {NS}"));
    ok(k, &format!("label ship alpha -n {NS} bump=1 --overwrite"));
    stale["metadata"]["labels"] = json!({"replaced": "stale"});
    let out = fail_in(k, "replace -f -", &stale.to_string());
    assert_stderr(
        &out,
        "Error from server (Conflict)",
        "replace with a stale resourceVersion",
    );
    assert_stderr(&out, "the object has been modified", "Conflict message");
    let mut fresh = json_of(k, &format!("get ship alpha -n {NS}"));
    fresh["metadata"]["labels"] = json!({"replaced": "fresh"});
    assert_eq!(
        ok_in(k, "replace -f -", &fresh.to_string()).trim(),
        "ship/alpha replaced"
    );
    assert_eq!(
        jp(
            k,
            &format!("get ship alpha -n {NS}"),
            "{.metadata.labels.replaced}"
        ),
        "fresh"
    );

    let out = fail_in(k, "create -f -", &ship_yaml(NS, "alpha", &[], "img-b"));
    assert_stderr(
        &out,
        "Error from server (AlreadyExists)",
        "create of an existing name",
    );
    assert_stderr(
        &out,
        "ships \"alpha\" already exists",
        "AlreadyExists message",
    );

    let gen = format!(
        "apiVersion: v1\nkind: Ship\nmetadata:\n  generateName: gen-\n  namespace: {NS}\n\
         spec:\n  image: img\n  shipClass: lightweight\n"
    );
    let out = ok_in(k, "create -f -", &gen);
    let name = out
        .trim()
        .strip_prefix("ship/")
        .and_then(|r| r.strip_suffix(" created"));
    let name = name.unwrap_or("");
    assert!(
        name.starts_with("gen-") && name.len() > 4,
        "generateName: got {out:?}"
    );
    ok(k, &format!("delete ship {name} -n {NS}"));

    let dry = ship_yaml(NS, "dry", &[], "img");
    let out = ok_in(k, "apply --dry-run=server -f -", &dry);
    assert_eq!(out.trim(), "ship/dry created (server dry run)");
    assert_stderr(
        &fail(k, &format!("get ship dry -n {NS}")),
        "(NotFound)",
        "dry run stores nothing",
    );
    let out = ok_in(
        k,
        "create --dry-run=server -o jsonpath={.spec.runStrategy} -f -",
        &dry,
    );
    assert_eq!(
        out, "Always",
        "a dry-run create returns the defaulted object"
    );

    let out = fail_in(k, "create -f -", &ship_yaml(NS, "Bad_Name", &[], "img"));
    assert_stderr(&out, "is invalid", "an invalid name is 422 Invalid");
    assert_stderr(&out, "metadata.name", "422 names metadata.name");

    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: no-such-namespace\n";
    let out = fail_in(k, "create -f -", cm);
    assert_stderr(
        &out,
        "Error from server (NotFound)",
        "create in a missing namespace",
    );
    assert_stderr(
        &out,
        "namespaces \"no-such-namespace\" not found",
        "missing namespace",
    );

    let lease = format!(
        "apiVersion: coordination/v1\nkind: Lease\nmetadata:\n  name: e2e-lease\n  \
         namespace: {NS}\nspec:\n  holderIdentity: me\n  leaseDurationSeconds: 15\n"
    );
    assert_eq!(
        ok_in(k, "apply -f -", &lease).trim(),
        "lease.coordination/e2e-lease created"
    );
    let holder = jp(
        k,
        &format!("get leases e2e-lease -n {NS}"),
        "{.spec.holderIdentity}",
    );
    assert_eq!(holder, "me");

    let out = ok(
        k,
        &format!("create role ship-editor -n {NS} --verb=get,update --resource=ships"),
    );
    assert_eq!(
        out.trim(),
        "role.rbac.authorization.k8s.io/ship-editor created"
    );
    let res = jp(
        k,
        &format!("get roles.authorization ship-editor -n {NS}"),
        "{.rules[0].resources[0]}",
    );
    assert_eq!(
        res, "ships",
        "a role created through rbac.authorization.k8s.io is an authorization role"
    );
}

fn delete(s: &mut Suite) {
    ensure_e2e_ships(s);
    let k = &s.k;
    assert_eq!(
        ok(k, &format!("delete ship web-2 -n {NS}")).trim(),
        "ship \"web-2\" deleted"
    );
    let out = fail(k, &format!("get ship web-2 -n {NS}"));
    assert_stderr(
        &out,
        "Error from server (NotFound): ships \"web-2\" not found",
        "get after delete",
    );

    let out = ok(k, &format!("delete -f {}", manifest("04-fleet.yaml")));
    assert_eq!(out.trim(), "fleet.apps \"my-fleet\" deleted");
    assert_stderr(
        &fail(k, "get fleet my-fleet -n default"),
        "(NotFound)",
        "fleet gone",
    );
    let out = fail(k, &format!("delete configmap missing -n {NS}"));
    let want = "Error from server (NotFound): configmaps \"missing\" not found";
    assert_stderr(&out, want, "delete of a missing object");

    let out = ok(k, &format!("delete ship alpha -n {NS} --dry-run=server"));
    assert_eq!(out.trim(), "ship \"alpha\" deleted (server dry run)");
    assert_eq!(
        names(k, &format!("get ship alpha -n {NS}")),
        svec(&["ship/alpha"]),
        "dry-run"
    );

    for (name, cascade) in [
        ("del-bg", "background"),
        ("del-fg", "foreground"),
        ("del-or", "orphan"),
    ] {
        ok_in(k, "create -f -", &ship_yaml(NS, name, &[], "img"));
        let out = ok(
            k,
            &format!("delete ship {name} -n {NS} --cascade={cascade} --timeout=30s"),
        );
        assert_eq!(
            out.trim(),
            format!("ship \"{name}\" deleted"),
            "delete --cascade={cascade}"
        );
        let gone = fail(k, &format!("get ship {name} -n {NS}"));
        assert_stderr(
            &gone,
            "(NotFound)",
            &format!("gone after --cascade={cascade}"),
        );
    }

    // A finalizer holds an object (with deletionTimestamp) until it is removed.
    let held = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: {NS}\n  \
         finalizers:\n  - example.com/hold\ndata:\n  a: b\n"
    );
    ok_in(k, "create -f -", &held);
    let out = ok(k, &format!("delete configmap held -n {NS} --wait=false"));
    assert_eq!(out.trim(), "configmap \"held\" deleted");
    let ts = jp(
        k,
        &format!("get configmap held -n {NS}"),
        "{.metadata.deletionTimestamp}",
    );
    assert!(
        !ts.is_empty(),
        "a finalized object gets deletionTimestamp and stays"
    );
    ok(k, &format!("patch configmap held -n {NS} --type merge -p '{{\"metadata\":{{\"finalizers\":null}}}}'"));
    poll(
        "configmap held disappears once its finalizer is removed",
        WAIT,
        || {
            let out = run(k, &format!("get configmap held -n {NS}"));
            (!out.success() && out.stderr.contains("(NotFound)")).then_some(())
        },
    );

    for name in ["by-label-1", "by-label-2"] {
        ok_in(
            k,
            "create -f -",
            &ship_yaml(NS, name, &[("doomed", "yes")], "img"),
        );
    }
    let mut out: Vec<String> = ok(k, &format!("delete ships -n {NS} -l doomed=yes"))
        .lines()
        .map(Into::into)
        .collect();
    out.sort();
    assert_eq!(
        out,
        svec(&["ship \"by-label-1\" deleted", "ship \"by-label-2\" deleted"])
    );
    assert_eq!(
        names(k, &format!("get ships -n {NS} -l doomed=yes")),
        svec(&[])
    );
}

fn managed_by<'v>(obj: &'v Value, manager: &str) -> Vec<&'v Value> {
    let all = obj["metadata"]["managedFields"].as_array();
    all.map(|a| a.iter().filter(|e| e["manager"] == manager).collect())
        .unwrap_or_default()
}

fn owns_image(entries: &[&Value]) -> bool {
    entries
        .iter()
        .any(|e| e["fieldsV1"]["f:spec"]["f:image"].is_object())
}

fn server_side_apply(s: &mut Suite) {
    let k = &s.k;
    let doc = |image: &str| ship_yaml(NS, "ssa-ship", &[("owner", "ssa")], image);
    let get = |tmpl: &str| jp(k, &format!("get ship ssa-ship -n {NS}"), tmpl);
    let with_fields = format!("get ship ssa-ship -n {NS} --show-managed-fields");
    // The other manager's configuration: no labels, another image.
    let theirs = ship_yaml(NS, "ssa-ship", &[], "img-ssa-2");
    let out = ok_in(k, "apply --server-side -f -", &doc("img-ssa-1"));
    assert_eq!(
        out.trim(),
        "ship/ssa-ship serverside-applied",
        "SSA creates a missing object"
    );
    let obj = json_of(k, &with_fields);
    let mine = managed_by(&obj, "kubectl");
    assert!(
        mine.iter()
            .any(|e| e["operation"] == "Apply" && e["apiVersion"] == "v1")
            && owns_image(&mine),
        "managedFields should hold an Apply entry of manager kubectl owning f:spec.f:image: {}",
        obj["metadata"]["managedFields"]
    );
    assert_eq!(obj["spec"]["image"], "img-ssa-1");
    let g0 = obj["metadata"]["generation"].to_string();
    let out = ok_in(k, "apply --server-side -f -", &doc("img-ssa-1"));
    assert_eq!(out.trim(), "ship/ssa-ship serverside-applied");
    assert_eq!(
        get("{.metadata.generation}"),
        g0,
        "a no-op apply keeps generation"
    );

    let out = fail_in(k, "apply --server-side --field-manager=other -f -", &theirs);
    assert!(
        out.stderr.to_lowercase().contains("conflict") && out.stderr.contains(".spec.image"),
        "an apply by another manager changing an owned field must fail with a conflict on \
         .spec.image; stderr:\n{}",
        out.stderr
    );
    assert_stderr(&out, "\"kubectl\"", "the conflict names the owning manager");
    assert_eq!(
        get("{.spec.image}"),
        "img-ssa-1",
        "a conflicting apply changes nothing"
    );
    let cmd = "apply --server-side --field-manager=other --force-conflicts -f -";
    assert_eq!(
        ok_in(k, cmd, &theirs).trim(),
        "ship/ssa-ship serverside-applied"
    );
    let obj = json_of(k, &with_fields);
    let fields = &obj["metadata"]["managedFields"];
    assert_eq!(
        obj["spec"]["image"], "img-ssa-2",
        "--force-conflicts takes over"
    );
    assert!(
        owns_image(&managed_by(&obj, "other")),
        "other owns f:spec.f:image: {fields}"
    );
    assert!(
        !owns_image(&managed_by(&obj, "kubectl")),
        "kubectl lost f:spec.f:image: {fields}"
    );
    // A later apply by kubectl without the label (it alone owns it) removes it.
    ok_in(
        k,
        "apply --server-side --force-conflicts -f -",
        &ship_yaml(NS, "ssa-ship", &[], "img-ssa-2"),
    );
    assert_eq!(
        get("{.metadata.labels.owner}"),
        "",
        "apply removes fields the manager dropped"
    );

    // A kind kubectl knows.
    let cm = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa-cm\n  namespace: {NS}\ndata:\n  k: v\n");
    let out = ok_in(k, "apply --server-side -f -", &cm);
    assert_eq!(out.trim(), "configmap/ssa-cm serverside-applied");
    assert_eq!(
        jp(k, &format!("get configmap ssa-cm -n {NS}"), "{.data.k}"),
        "v"
    );
}

fn auth_admin(s: &mut Suite) {
    let k = &s.k;
    assert_eq!(can_i(k, "create ships"), "yes", "admin can create ships");
    assert_eq!(can_i(k, "'*' '*'"), "yes", "admin can do everything");
    assert_eq!(can_i(k, "delete nodes"), "yes");
    let who = json_of(k, "auth whoami");
    let user = who["status"]["userInfo"]["username"].as_str().unwrap_or("");
    assert!(!user.is_empty(), "auth whoami as admin: {who}");
    eprintln!(
        "admin is {user:?}, groups {}",
        who["status"]["userInfo"]["groups"]
    );
    assert_contains(
        &ok(k, "auth whoami"),
        user,
        "auth whoami table shows the user name",
    );
}

fn auth_service_account(s: &mut Suite) {
    let k = &s.k;
    assert_eq!(
        ok(k, &format!("create serviceaccount viewer -n {NS}")).trim(),
        "serviceaccount/viewer created"
    );
    let out = ok(k, &format!("create rolebinding viewer-view -n {NS} --clusterrole=view --serviceaccount={NS}:viewer"));
    assert_eq!(
        out.trim(),
        "rolebinding.rbac.authorization.k8s.io/viewer-view created"
    );
    let user = format!("system:serviceaccount:{NS}:viewer");

    let jwt = ok(k, &format!("create token viewer -n {NS}"))
        .trim()
        .to_string();
    assert_eq!(
        jwt.split('.').count(),
        3,
        "TokenRequest returns a JWT: {jwt:?}"
    );
    ok(
        k,
        &format!("create token viewer -n {NS} --audience=tugboat-e2e --duration=10m"),
    );

    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: viewer-token\n  namespace: {NS}\n  \
         annotations:\n    kubernetes.io/service-account.name: viewer\n\
         type: kubernetes.io/service-account-token\n"
    );
    assert_eq!(
        ok_in(k, "apply -f -", &secret).trim(),
        "secret/viewer-token created"
    );
    let get_secret = format!("get secret viewer-token -n {NS}");
    let opaque = poll(
        "the server fills data.token of the service-account-token Secret",
        WAIT,
        || {
            let t = jp(k, &get_secret, "{.data.token}");
            (!t.is_empty()).then(|| {
                ok(
                    k,
                    &format!("{get_secret} -o go-template={{{{.data.token|base64decode}}}}"),
                )
            })
        },
    );
    let opaque = opaque.trim().to_string();
    assert!(!opaque.is_empty());

    for (label, token) in [("TokenRequest JWT", &jwt), ("Secret token", &opaque)] {
        let sa = s.with_token(&format!("sa-{}.kubeconfig", label.len()), token);
        assert_eq!(
            can_i(&sa, &format!("list ships -n {NS}")),
            "yes",
            "{label}: view lists ships"
        );
        assert_eq!(
            can_i(&sa, &format!("create ships -n {NS}")),
            "no",
            "{label}: view can't create"
        );
        assert_eq!(
            can_i(&sa, &format!("get secrets -n {NS}")),
            "no",
            "{label}: no secrets for view"
        );
        assert_eq!(
            can_i(&sa, "list ships -n default"),
            "no",
            "{label}: the binding is namespaced"
        );

        let who = json_of(&sa, "auth whoami");
        assert_eq!(
            who["status"]["userInfo"]["username"],
            user.as_str(),
            "{label}: whoami {who}"
        );
        let groups = who["status"]["userInfo"]["groups"].to_string();
        assert_contains(
            &groups,
            "system:serviceaccounts",
            &format!("{label}: SA groups"),
        );

        assert!(
            !names(&sa, &format!("get ships -n {NS}")).is_empty(),
            "{label}: SA lists ships"
        );
        let out = fail_in(&sa, "create -f -", &ship_yaml(NS, "forbidden", &[], "img"));
        assert_stderr(
            &out,
            "Error from server (Forbidden)",
            &format!("{label}: create as viewer"),
        );
        let msg = format!(
            "ships is forbidden: User \"{user}\" cannot create resource \"ships\" in API group \"\" \
             in the namespace \"{NS}\""
        );
        assert_stderr(&out, &msg, &format!("{label}: Forbidden message"));
        let out = fail(&sa, &format!("get secrets -n {NS}"));
        let msg = format!(
            "secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" \
             in the namespace \"{NS}\""
        );
        assert_stderr(&out, &msg, &format!("{label}: list secrets as viewer"));
    }

    let sa = s.with_token("sa-jwt.kubeconfig", &jwt);
    let body = ship_yaml_json(NS, "forbidden-raw");
    let r = raw(
        s,
        "POST",
        &format!("/api/v1/namespaces/{NS}/ships"),
        Some(&jwt),
        Some(&body),
    );
    assert_status(&r, 403, "Forbidden", "create as viewer");
    assert_eq!(
        r.json()["details"]["kind"],
        "ships",
        "403 details.kind: {}",
        r.body
    );
    let msg = r.json()["message"].as_str().unwrap_or("").to_string();
    assert_contains(
        &msg,
        &format!("User \"{user}\" cannot create resource \"ships\""),
        "403",
    );
    let rules = ok(&sa, &format!("auth can-i --list -n {NS}"));
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("ships ")
                && ["get", "list", "watch"].iter().all(|v| l.contains(v))),
        "auth can-i --list (SelfSubjectRulesReview) shows ships with get/list/watch:\n{rules}"
    );

    // Revocation: without the binding the same token may no longer list.
    ok(k, &format!("delete rolebinding viewer-view -n {NS}"));
    poll(
        "can-i list ships turns to no once the RoleBinding is deleted",
        WAIT,
        || (can_i(&sa, &format!("list ships -n {NS}")) == "no").then_some(()),
    );
    // Deleting the token Secret invalidates the opaque token.
    let by_secret = s.with_token("sa-opaque.kubeconfig", &opaque);
    ok(k, &format!("delete secret viewer-token -n {NS}"));
    poll(
        "the opaque token stops working once its Secret is deleted",
        WAIT,
        || {
            let out = run(
                &by_secret,
                &format!("get --raw /api/v1/namespaces/{NS}/ships"),
            );
            (!out.success() && out.stderr.contains("Unauthorized")).then_some(())
        },
    );
}

fn auth_seed_rbac(s: &mut Suite) {
    let k = &s.k;
    // The seed RoleBinding (authorization/v1, roleRef.apiGroup: authorization) grants ship-reader.
    let token = ok(k, "create token my-service-account -n default")
        .trim()
        .to_string();
    let sa = s.with_token("seed-sa.kubeconfig", &token);
    assert_eq!(
        can_i(&sa, "list ships -n default"),
        "yes",
        "seed SA via ship-reader"
    );
    assert_eq!(can_i(&sa, "delete ships -n default"), "no");
    assert_eq!(can_i(&sa, "list configmaps -n default"), "no");

    // `tugboat kubeconfig --user alice` (a client certificate); the seed binds alice too.
    let alice = s.with_user("alice", &[]);
    assert_eq!(
        can_i(&alice, "list ships -n default"),
        "yes",
        "alice via ship-reader-binding"
    );
    assert_eq!(can_i(&alice, "delete ships -n default"), "no");
    assert_eq!(can_i(&alice, &format!("list ships -n {NS}")), "no");
    assert_eq!(
        json_of(&alice, "auth whoami")["status"]["userInfo"]["username"],
        "alice"
    );
    let one = names(
        &alice,
        "get ships -n default --field-selector metadata.name=ship",
    );
    assert_eq!(one, svec(&["ship/ship"]));
    let out = fail(&alice, "delete ship ship -n default");
    assert_stderr(
        &out,
        "Error from server (Forbidden)",
        "alice may not delete",
    );

    let bob = s.with_user("bob", &["ops-team"]);
    assert_eq!(
        can_i(&bob, "list nodes"),
        "yes",
        "group ops-team via node-reader-binding"
    );
    assert_eq!(can_i(&bob, "list ships -n default"), "no");
    let who = json_of(&bob, "auth whoami");
    assert_eq!(who["status"]["userInfo"]["username"], "bob");
    assert_contains(
        &who["status"]["userInfo"]["groups"].to_string(),
        "ops-team",
        "bob's groups",
    );
    ok(&bob, "get nodes");
}

/// An HTTPS request without kubectl (see [`raw_request`]).
fn raw(
    s: &Suite,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> RawResponse {
    let body = body.map(|b| ("application/json", b.as_bytes()));
    raw_request(s.k.kubeconfig(), method, path, bearer, body).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts an HTTP status whose body is the matching `Status` object.
#[track_caller]
fn assert_status(r: &RawResponse, code: u16, reason: &str, what: &str) {
    let v = r.json();
    assert!(
        r.status == code
            && v["kind"] == "Status"
            && v["apiVersion"] == "v1"
            && v["status"] == "Failure"
            && v["code"] == code
            && v["reason"] == reason,
        "{what}: expected HTTP {code} with a Status body (reason {reason}); got HTTP {} {}",
        r.status,
        r.body
    );
}

fn unauthenticated(s: &mut Suite) {
    let r = raw(s, "GET", "/api/v1/namespaces", None, None);
    assert_status(&r, 401, "Unauthorized", "GET without credentials");
    let r = raw(s, "GET", "/apis", None, None);
    assert_status(&r, 401, "Unauthorized", "discovery without credentials");
    let body = json!({"apiVersion": "v1", "kind": "Ship", "metadata": {"name": "anon"},
                      "spec": {"image": "img", "shipClass": "lightweight"}});
    let r = raw(
        s,
        "POST",
        "/api/v1/namespaces/default/ships",
        None,
        Some(&body.to_string()),
    );
    assert_status(&r, 401, "Unauthorized", "POST without credentials");
    let r = raw(
        s,
        "GET",
        "/api/v1/namespaces",
        Some("not-a-real-token"),
        None,
    );
    assert_status(&r, 401, "Unauthorized", "an unknown bearer token");
    // A JWT-shaped token with a made-up signature.
    let forged = "eyJhbGciOiJSUzI1NiJ9.\
                  eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpteS1zZXJ2aWNlLWFjY291bnQifQ.\
                  c2lnbmF0dXJl";
    let r = raw(
        s,
        "GET",
        "/api/v1/namespaces/default/ships",
        Some(forged),
        None,
    );
    assert_status(&r, 401, "Unauthorized", "a JWT with a bad signature");

    let bogus = s.with_token("bogus.kubeconfig", "not-a-real-token");
    let out = fail(&bogus, "get ships -n default");
    // kubectl's discovery client reports a 401 this way (as it does against Kubernetes).
    let want = "You must be logged in to the server";
    assert_stderr(&out, want, "kubectl with an unknown token");
}

fn bad_bodies(s: &mut Suite) {
    let bad_json = s.file(
        "bad.json",
        r#"{"apiVersion": "v1", "kind": "Ship", "metadata": {"#,
    );
    let array = s.file("array.json", "[1, 2, 3]");
    let cm = s.file(
        "cm.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"wrong-kind"}}"#,
    );
    let wrong_type = s.file(
        "wrong-type.json",
        r#"{"apiVersion":"v1","kind":"Ship","metadata":{"name":"wrong-type"},
            "spec":{"image":42,"shipClass":"lightweight"}}"#,
    );
    let k = &s.k;
    let out = fail(k, &format!("create -f {bad_json}"));
    assert!(
        !out.stderr.contains("Error from server"),
        "broken JSON is kubectl's own error: {}",
        out.stderr
    );
    let out = fail_in(
        k,
        "apply -f -",
        "apiVersion: v1\nkind: Ship\nmetadata: [unclosed\n",
    );
    assert_stderr(&out, "yaml", "broken YAML is kubectl's own error");

    let post = |file: &str| {
        fail(
            k,
            &format!("create --raw /api/v1/namespaces/default/ships -f {file}"),
        )
    };
    assert_stderr(
        &post(&bad_json),
        "BadRequest",
        "a malformed JSON body is 400",
    );
    assert_stderr(&post(&array), "BadRequest", "a JSON array body is 400");
    assert_stderr(
        &post(&cm),
        "BadRequest",
        "a ConfigMap POSTed to ships is 400",
    );
    let out = post(&wrong_type);
    assert!(
        out.stderr.contains("spec.image")
            && ["BadRequest", "Invalid", "invalid"]
                .iter()
                .any(|w| out.stderr.contains(w)),
        "a number where a string belongs names spec.image: {}",
        out.stderr
    );
}

fn field_validation(s: &mut Suite) {
    let k = &s.k;
    let strict = format!(
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: strict-ship\n  namespace: {NS}\nspec:\n  \
         image: img\n  shipClass: lightweight\n  bogus: true\n"
    );
    let out = fail_in(k, "apply -f -", &strict);
    assert_stderr(
        &out,
        "unknown field \"spec.bogus\"",
        "unknown field, fieldValidation=Strict",
    );
    assert_stderr(
        &out,
        "BadRequest",
        "Strict: unknown field is 400 BadRequest",
    );
    let out = fail(k, &format!("get ship strict-ship -n {NS}"));
    assert_stderr(&out, "(NotFound)", "nothing stored");
    let warn = strict.replace("strict-ship", "warn-ship");
    let out = k.run_stdin(&["apply", "--validate=warn", "-f", "-"], &warn);
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.success(),
        "apply --validate=warn succeeds: {}",
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "ship/warn-ship created");
    assert_stderr(
        &out,
        "unknown field \"spec.bogus\"",
        "--validate=warn prints the warning",
    );
    let spec = jp(k, &format!("get ship warn-ship -n {NS}"), "{.spec}");
    let spec: Value = serde_json::from_str(&spec).unwrap_or(Value::Null);
    assert!(
        spec.is_object() && spec.get("bogus").is_none(),
        "unknown fields dropped: {spec}"
    );
    let ignore = strict.replace("strict-ship", "ignore-ship");
    let out = k.run_stdin(&["apply", "--validate=false", "-f", "-"], &ignore);
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.success(),
        "apply --validate=false succeeds: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("bogus"),
        "Ignore warns nothing: {}",
        out.stderr
    );
}

fn wrong_kinds(s: &mut Suite) {
    let k = &s.k;
    let nope = "apiVersion: v1\nkind: Nope\nmetadata:\n  name: x\n";
    let out = fail_in(k, "apply --validate=false -f -", nope);
    let want = "no matches for kind \"Nope\" in version \"v1\"";
    assert_stderr(&out, want, "an unknown kind (no validation)");
    let out = fail(k, "get bogusthings");
    let want = "the server doesn't have a resource type \"bogusthings\"";
    assert_stderr(&out, want, "an unknown resource");
    let out = fail(k, "get --raw /apis/nope.example/v1");
    assert_stderr(&out, "NotFound", "an unknown group version is 404");
    // With the default --validate=strict kubectl asks the OpenAPI v3 document whether the
    // server validates this kind; for a kind it lacks, kubectl falls back to client-side
    // validation with /openapi/v2.
    let out = fail_in(k, "apply -f -", nope);
    assert_stderr(
        &out,
        "no matches for kind \"Nope\" in version \"v1\"",
        "an unknown kind",
    );
}

fn oversize_body(s: &mut Suite) {
    let blob = "x".repeat(3 * 1024 * 1024 + 512 * 1024);
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "too-big"},
                     "data": {"blob": blob}})
    .to_string();
    let big_file = s.file("big.json", &big);
    let k = &s.k;
    let out = fail(
        k,
        &format!("create --raw /api/v1/namespaces/default/configmaps -f {big_file}"),
    );
    assert_stderr(&out, "RequestEntityTooLarge", "a body over 3 MiB is 413");
    let out = fail(k, "get configmap too-big -n default");
    assert_stderr(&out, "(NotFound)", "nothing stored");
}

fn bad_selectors(s: &mut Suite) {
    let k = &s.k;
    let out = fail(k, &format!("get ships -n {NS} -l 'a in b'"));
    assert_stderr(
        &out,
        "(BadRequest)",
        "a malformed label selector is 400 BadRequest",
    );
    let out = fail(
        k,
        &format!("get ships -n {NS} --field-selector spec.bogus=x"),
    );
    assert_stderr(
        &out,
        "(BadRequest)",
        "an unsupported field selector is 400 BadRequest",
    );
    assert_stderr(&out, "spec.bogus", "the error names the field");
}

fn namespace_deletion(s: &mut Suite) {
    let k = &s.k;
    let ns = "kubectl-doomed";
    assert_eq!(
        ok(k, &format!("create namespace {ns}")).trim(),
        format!("namespace/{ns} created")
    );
    ok(
        k,
        &format!("create configmap c1 -n {ns} --from-literal=a=b"),
    );
    ok(
        k,
        &format!("create secret generic s1 -n {ns} --from-literal=a=b"),
    );
    ok_in(k, "create -f -", &ship_yaml(ns, "s1", &[], "img"));
    let dep = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d1\n  namespace: {ns}\nspec:\n  \
         replicas: 1\n  selector:\n    app: d1\n  shipTemplate:\n    metadata:\n      labels:\n        \
         app: d1\n    spec:\n      image: img\n      shipClass: lightweight\n"
    );
    ok_in(k, "create -f -", &dep);
    let out = ok(k, &format!("delete namespace {ns} --timeout=90s"));
    assert_eq!(out.trim(), format!("namespace \"{ns}\" deleted"));
    let out = fail(k, &format!("get namespace {ns}"));
    assert_stderr(
        &out,
        &format!("namespaces \"{ns}\" not found"),
        "gone once kubectl delete returns",
    );
    for (path, name) in [
        ("api/v1", "ships/s1"),
        ("api/v1", "configmaps/c1"),
        ("api/v1", "secrets/s1"),
        ("apis/apps/v1", "deployments/d1"),
    ] {
        let (plural, obj) = name.split_once('/').unwrap_or_default();
        let out = ok(k, &format!("get --raw /{path}/namespaces/{ns}/{plural}"));
        let list: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let left: Vec<&str> = list["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["metadata"]["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !left.contains(&obj),
            "{name} survived its namespace's deletion: {out}"
        );
    }
    // A namespace of the same name starts empty.
    ok(k, &format!("create namespace {ns}"));
    assert_stderr(
        &fail(k, &format!("get ship s1 -n {ns}")),
        "(NotFound)",
        "no old ship",
    );
    assert_stderr(
        &fail(k, &format!("get configmap c1 -n {ns}")),
        "(NotFound)",
        "no old configmap",
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn kubectl_against_tugboat_store() {
    let audit_dir = tempfile::tempdir().expect("temp dir");
    let audit = audit_dir.path().join("audit.log");
    let node = TugboatNode::start(TugboatOptions {
        api: true,
        extra_args: vec!["--audit-log".into(), audit.display().to_string()],
        ..TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    run_suite(&node);
    check_audit_log(&audit);
}

/// Every request of the session is in the audit log as a JSON line; the refused create of the
/// ServiceAccount bound to `view` is there with who, what and 403.
fn check_audit_log(path: &std::path::Path) {
    // The log is written by a background thread; give it a moment to catch up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect();
        let forbidden = lines.iter().any(|e| {
            e["user"]
                .as_str()
                .unwrap_or("")
                .starts_with("system:serviceaccount:")
                && e["verb"] == "create"
                && e["resource"] == "ships"
                && e["code"] == 403
        });
        let admin_reads = lines
            .iter()
            .filter(|e| e["user"] == "admin" && e["verb"] == "list" && e["code"] == 200)
            .count();
        if forbidden && admin_reads > 0 {
            for e in &lines {
                for field in ["ts", "user", "verb", "uri", "code", "latencyMs", "sourceIp"] {
                    assert!(e.get(field).is_some(), "audit line without {field}: {e}");
                }
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log {} lacks the forbidden create or admin lists ({} lines)",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kubectl_against_debian_etcd() {
    let etcd = EtcdNode::start(EtcdOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let node = TugboatNode::start(TugboatOptions {
        api: true,
        extra_args: vec!["--etcd-endpoints".into(), etcd.plain_endpoint()],
        ..TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    run_suite(&node);
    // The objects live in Debian's etcd, not in tugboatd's own store.
    let keys = etcd.etcdctl().ok(&["get", "/", "--prefix", "--keys-only"]);
    let keys = keys.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        keys.lines().any(|l| l.contains("ships")),
        "Debian etcd holds no Ship keys; keys:\n{keys}"
    );
    let local = node.etcdctl().ok(&["get", "", "--from-key", "--keys-only"]);
    let local = local.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !local.lines().any(|l| l.contains("ships")),
        "with --etcd-endpoints the local store holds no Ships; local keys:\n{local}"
    );
}
