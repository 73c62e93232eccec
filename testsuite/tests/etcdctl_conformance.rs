//! The real `etcdctl` 3.4 against tugboatd, over the plaintext loopback listener and over the
//! mutual-TLS listener (each `#[test]` runs its body once per transport, on a fresh node).
//!
//! `TUGBOAT_TEST_TARGET=etcd` runs the same bodies against Debian's etcd 3.4 (plain transport
//! only: no TLS is set up there) to validate the expectations themselves.
//!
//! etcdctl 3.4 has no `get --count-only` (it arrived in 3.5); counts are asserted through the
//! `count` field of `-w json` answers instead.

use std::time::Duration;

use serde_json::Value;
use tugboat_testsuite::{
    for_each_transport, CmdOutput, Etcdctl, EtcdctlChild, TargetKind, TugboatNode, TugboatOptions,
};

/// Runs a command that must succeed; returns stdout.
fn ok(ctl: &Etcdctl, args: &[&str]) -> String {
    match ctl.ok(args) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Runs a command that may fail.
fn run(ctl: &Etcdctl, args: &[&str], stdin: Option<&str>) -> CmdOutput {
    match ctl.run(args, stdin) {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    }
}

fn json(ctl: &Etcdctl, args: &[&str]) -> Value {
    let out = ok(ctl, args);
    match serde_json::from_str(out.trim()) {
        Ok(v) => v,
        Err(e) => panic!("etcdctl {args:?} printed non-JSON ({e}): {out}"),
    }
}

fn num(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    match cur.as_i64() {
        Some(n) => n,
        None => panic!("no integer at {path:?} in {v}"),
    }
}

fn current_revision(ctl: &Etcdctl) -> i64 {
    num(
        &json(ctl, &["get", "no-such-key", "-w", "json"]),
        &["header", "revision"],
    )
}

/// Asserts a failed command whose stderr carries exactly this `Error: ...` line.
fn assert_error(out: &CmdOutput, expected: &str) {
    assert!(
        !out.success(),
        "expected failure `{expected}`, got success: {}",
        out.stdout
    );
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error:"))
        .collect();
    assert_eq!(errors, vec![expected], "stderr was:\n{}", out.stderr);
}

fn spawn(ctl: &Etcdctl, args: &[&str]) -> EtcdctlChild {
    match ctl.spawn(args) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn wait_lines(child: &mut EtcdctlChild, n: usize) -> Vec<String> {
    match child.wait_lines(n, Duration::from_secs(30)) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    }
}

/// Puts `probe_key` until the (already spawned) watch reports an event, proving it is registered.
///
/// Probes written before the watch registered are never reported, so their number is unknown:
/// [`events_after_probes`] strips them instead of counting them.
fn establish_watch(ctl: &Etcdctl, child: &mut EtcdctlChild, probe_key: &str) {
    for _ in 0..100 {
        ok(ctl, &["put", probe_key, "probe"]);
        if !child.drain_for(Duration::from_millis(300)).is_empty() {
            return;
        }
    }
    panic!(
        "watch never reported a probe write; stderr: {}",
        child.stderr()
    );
}

/// Waits until `n` lines follow the leading probe events (`PUT`, `probe_key`, `probe`) and returns them.
fn events_after_probes(child: &mut EtcdctlChild, probe_key: &str, n: usize) -> Vec<String> {
    loop {
        let all = child.received().to_vec();
        let mut rest: &[String] = &all;
        while rest.len() >= 3 && rest[0] == "PUT" && rest[1] == probe_key && rest[2] == "probe" {
            rest = &rest[3..];
        }
        if rest.len() >= n {
            return rest.to_vec();
        }
        wait_lines(child, all.len() + 1);
    }
}

#[test]
fn put_and_get_variants() {
    for_each_transport(|_node, ctl, _t| {
        assert_eq!(ok(ctl, &["put", "a", "1"]), "OK\n"); // rev 2
        assert_eq!(ok(ctl, &["put", "ab", "4"]), "OK\n"); // rev 3
        assert_eq!(ok(ctl, &["put", "b", "2"]), "OK\n"); // rev 4
        assert_eq!(ok(ctl, &["put", "c", "3"]), "OK\n"); // rev 5
        assert_eq!(ok(ctl, &["put", "a", "10"]), "OK\n"); // rev 6

        assert_eq!(ok(ctl, &["get", "a"]), "a\n10\n");
        assert_eq!(ok(ctl, &["get", "a", "--prefix"]), "a\n10\nab\n4\n");
        assert_eq!(ok(ctl, &["get", "a", "c"]), "a\n10\nab\n4\nb\n2\n");
        assert_eq!(
            ok(ctl, &["get", "a", "c", "--limit", "2"]),
            "a\n10\nab\n4\n"
        );
        assert_eq!(ok(ctl, &["get", "a", "--rev", "2"]), "a\n1\n");
        assert_eq!(ok(ctl, &["get", "c", "--rev", "4"]), "");
        assert_eq!(
            ok(ctl, &["get", "a", "--prefix", "--keys-only"]),
            "a\n\nab\n\n"
        );
        assert_eq!(ok(ctl, &["get", "a", "--print-value-only"]), "10\n");
        assert_eq!(ok(ctl, &["get", "b", "--from-key"]), "b\n2\nc\n3\n");
        assert_eq!(
            ok(
                ctl,
                &["get", "a", "--from-key", "--keys-only", "--order=DESCEND"]
            ),
            "c\n\nb\n\nab\n\na\n\n"
        );
        assert_eq!(
            ok(
                ctl,
                &[
                    "get",
                    "a",
                    "--from-key",
                    "--sort-by=VALUE",
                    "--order=ASCEND",
                    "--print-value-only"
                ]
            ),
            "10\n2\n3\n4\n"
        );
        assert_eq!(
            ok(
                ctl,
                &[
                    "get",
                    "a",
                    "--from-key",
                    "--sort-by=MODIFY",
                    "--order=DESCEND",
                    "--keys-only"
                ]
            ),
            "a\n\nc\n\nb\n\nab\n\n"
        );
        assert_eq!(
            ok(
                ctl,
                &[
                    "get",
                    "a",
                    "--from-key",
                    "--sort-by=CREATE",
                    "--order=DESCEND",
                    "--keys-only"
                ]
            ),
            "c\n\nb\n\nab\n\na\n\n"
        );
        assert_eq!(
            ok(
                ctl,
                &[
                    "get",
                    "a",
                    "--from-key",
                    "--sort-by=VERSION",
                    "--order=DESCEND",
                    "--keys-only",
                    "--limit=1"
                ]
            ),
            "a\n\n"
        );

        // count (etcdctl 3.4's stand-in for --count-only) and `more` with a limit.
        let v = json(ctl, &["get", "a", "--prefix", "--limit", "1", "-w", "json"]);
        assert_eq!(num(&v, &["count"]), 2);
        assert_eq!(v["more"], Value::Bool(true));
        assert_eq!(num(&v, &["header", "revision"]), 6);
        let kv = &v["kvs"][0];
        assert_eq!(kv["key"], Value::String("YQ==".into())); // "a"
        assert_eq!(kv["value"], Value::String("MTA=".into())); // "10"
        assert_eq!(num(kv, &["create_revision"]), 2);
        assert_eq!(num(kv, &["mod_revision"]), 6);
        assert_eq!(num(kv, &["version"]), 2);
        let v = json(ctl, &["get", "zzz", "-w", "json"]);
        assert!(v.get("kvs").is_none() && v.get("count").is_none(), "{v}");

        // put --prev-kv prints the previous pair after OK.
        assert_eq!(ok(ctl, &["put", "b", "20", "--prev-kv"]), "OK\nb\n2\n");
    });
}

#[test]
fn delete_variants() {
    for_each_transport(|_node, ctl, _t| {
        for (k, v) in [("p/1", "x"), ("p/2", "y"), ("q", "z"), ("r", "w")] {
            ok(ctl, &["put", k, v]);
        }
        assert_eq!(ok(ctl, &["del", "p/", "--prefix"]), "2\n");
        assert_eq!(ok(ctl, &["get", "p/", "--prefix"]), "");
        assert_eq!(ok(ctl, &["del", "q", "--prev-kv"]), "1\nq\nz\n");
        assert_eq!(ok(ctl, &["del", "missing"]), "0\n");
        assert_eq!(ok(ctl, &["del", "a", "--from-key"]), "1\n");
        assert_eq!(ok(ctl, &["get", "", "--from-key"]), "");
        // 4 puts + 3 deleting requests (the miss does not bump the revision).
        assert_eq!(current_revision(ctl), 8);
    });
}

#[test]
fn txn_success_failure_and_json() {
    for_each_transport(|_node, ctl, _t| {
        ok(ctl, &["put", "k", "v1"]); // rev 2
        let out = run(
            ctl,
            &["txn"],
            Some("value(\"k\") = \"v1\"\n\nput k v2\nget k\n\nput k nope\n\n"),
        );
        assert!(out.success(), "{}", out.stderr);
        assert_eq!(out.stdout, "SUCCESS\n\nOK\n\nk\nv2\n"); // rev 3
        let out = run(
            ctl,
            &["txn"],
            Some("version(\"k\") = \"5\"\n\nput k never\n\nput other x\ndel k\n\n"),
        );
        assert!(out.success(), "{}", out.stderr);
        assert_eq!(out.stdout, "FAILURE\n\nOK\n\n1\n"); // rev 4
        assert_eq!(ok(ctl, &["get", "k"]), "");
        let out = run(
            ctl,
            &["txn", "-w", "json"],
            Some("mod(\"other\") = \"4\"\ncreate(\"other\") = \"4\"\n\nget other\nput n 1\n\n\n"),
        );
        assert!(out.success(), "{}", out.stderr);
        let v: Value = match serde_json::from_str(out.stdout.trim()) {
            Ok(v) => v,
            Err(e) => panic!("txn -w json printed non-JSON ({e}): {}", out.stdout),
        };
        assert_eq!(v["succeeded"], Value::Bool(true), "{v}");
        assert_eq!(num(&v, &["header", "revision"]), 5);
        let range = &v["responses"][0]["Response"]["ResponseRange"];
        assert_eq!(num(range, &["count"]), 1, "{v}");
        assert_eq!(
            range["kvs"][0]["value"],
            Value::String("eA==".into()),
            "{v}"
        );
        assert_eq!(
            num(
                &v["responses"][1]["Response"]["ResponsePut"],
                &["header", "revision"]
            ),
            5,
            "{v}"
        );
        let out = run(
            ctl,
            &["txn", "-w", "json"],
            Some("mod(\"other\") = \"1\"\n\n\nget n\n\n"),
        );
        let v: Value = match serde_json::from_str(out.stdout.trim()) {
            Ok(v) => v,
            Err(e) => panic!("txn -w json printed non-JSON ({e}): {}", out.stdout),
        };
        assert!(v.get("succeeded").is_none(), "failure branch expected: {v}");
        assert_eq!(
            num(&v["responses"][0]["Response"]["ResponseRange"], &["count"]),
            1
        );
        let out = run(ctl, &["txn"], Some("\nput d 1\nput d 2\n\n\n"));
        assert_error(
            &out,
            "Error: etcdserver: duplicate key given in txn request",
        );
    });
}

#[test]
fn watch_key_prefix_rev_and_prev_kv() {
    for_each_transport(|_node, ctl, _t| {
        // Live watch on one key: probes prove registration, then exact events follow.
        let mut w = spawn(ctl, &["watch", "wk"]);
        establish_watch(ctl, &mut w, "wk");
        ok(ctl, &["put", "wk", "1"]);
        ok(ctl, &["put", "other", "x"]);
        ok(ctl, &["del", "wk"]);
        let lines = events_after_probes(&mut w, "wk", 6);
        assert_eq!(
            lines,
            ["PUT", "wk", "1", "DELETE", "wk", ""]
                .map(String::from)
                .to_vec()
        );
        w.kill();

        // Prefix watch.
        let mut w = spawn(ctl, &["watch", "pre/", "--prefix"]);
        establish_watch(ctl, &mut w, "pre/probe");
        ok(ctl, &["put", "pre/a", "1"]);
        ok(ctl, &["put", "prx", "no"]);
        ok(ctl, &["put", "pre/b", "2"]);
        let lines = events_after_probes(&mut w, "pre/probe", 6);
        assert_eq!(
            lines,
            ["PUT", "pre/a", "1", "PUT", "pre/b", "2"]
                .map(String::from)
                .to_vec()
        );
        w.kill();

        // Historical watch from a revision, with previous values.
        let start = current_revision(ctl) + 1;
        ok(ctl, &["put", "h", "1"]);
        ok(ctl, &["put", "h", "2"]);
        ok(ctl, &["del", "h"]);
        let rev = start.to_string();
        let mut w = spawn(ctl, &["watch", "h", "--rev", &rev, "--prev-kv"]);
        let lines = wait_lines(&mut w, 3 + 5 + 5);
        assert_eq!(
            lines,
            ["PUT", "h", "1", "PUT", "h", "1", "h", "2", "DELETE", "h", "2", "h", ""]
                .map(String::from)
                .to_vec()
        );
        w.kill();

        // JSON watch carries the revision and event type.
        let rev = (start + 1).to_string();
        let mut w = spawn(ctl, &["watch", "h", "--rev", &rev, "-w", "json"]);
        let lines = wait_lines(&mut w, 1);
        let v: Value = match serde_json::from_str(&lines[0]) {
            Ok(v) => v,
            Err(e) => panic!("watch -w json printed non-JSON ({e}): {}", lines[0]),
        };
        let events = v["Events"].as_array().cloned().unwrap_or_default();
        assert!(!events.is_empty(), "{v}");
        assert_eq!(num(&events[0]["kv"], &["mod_revision"]), start + 1, "{v}");
        w.kill();
    });
}

#[test]
fn lease_lifecycle() {
    for_each_transport(|_node, ctl, _t| {
        let out = ok(ctl, &["lease", "grant", "600"]);
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words.len(), 5, "{out}");
        assert_eq!(words[0], "lease");
        assert_eq!(words[2..].join(" "), "granted with TTL(600s)");
        let id = words[1].to_string();
        assert_eq!(id.len(), 16, "{out}");
        assert!(i64::from_str_radix(&id, 16).is_ok_and(|n| n > 0), "{out}");

        let other = ok(ctl, &["lease", "grant", "900"]);
        let other_id = other
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();

        let listed = ok(ctl, &["lease", "list"]);
        let mut lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.first().copied(), Some("found 2 leases"));
        lines.remove(0);
        lines.sort_unstable();
        let mut want = vec![id.as_str(), other_id.as_str()];
        want.sort_unstable();
        assert_eq!(lines, want);

        ok(ctl, &["put", "lk1", "v", "--lease", &id]);
        ok(ctl, &["put", "lk2", "v", "--lease", &id]);
        assert_eq!(
            ok(ctl, &["lease", "keep-alive", "--once", &id]),
            format!("lease {id} keepalived with TTL(600)\n")
        );
        let ttl = ok(ctl, &["lease", "timetolive", &id, "--keys"]);
        let prefix = format!("lease {id} granted with TTL(600s), remaining(");
        assert!(ttl.starts_with(&prefix), "{ttl}");
        let rest = &ttl[prefix.len()..];
        let (remaining, tail) = rest.split_once("s)").unwrap_or(("", ""));
        let remaining: i64 = remaining.parse().unwrap_or(-1);
        assert!(remaining > 0 && remaining <= 600, "{ttl}");
        assert_eq!(tail, ", attached keys([lk1 lk2])\n");

        let v = json(ctl, &["lease", "timetolive", &id, "--keys", "-w", "json"]);
        assert_eq!(num(&v, &["granted-ttl"]), 600);
        assert_eq!(
            v["keys"],
            serde_json::json!(["bGsx", "bGsy"]),
            "attached keys (base64 of lk1, lk2): {v}"
        );

        let rev_before = current_revision(ctl);
        assert_eq!(
            ok(ctl, &["lease", "revoke", &id]),
            format!("lease {id} revoked\n")
        );
        assert_eq!(ok(ctl, &["get", "lk", "--prefix"]), "");
        // Both keys go in one revision.
        assert_eq!(current_revision(ctl), rev_before + 1);
        assert_eq!(
            ok(ctl, &["lease", "timetolive", &id]),
            format!("lease {id} already expired\n")
        );
        assert_eq!(
            ok(ctl, &["lease", "list"]),
            format!("found 1 leases\n{other_id}\n")
        );
        assert_error(
            &run(ctl, &["lease", "revoke", &id], None),
            "Error: failed to revoke lease (etcdserver: requested lease not found)",
        );
        assert_error(
            &run(ctl, &["lease", "keep-alive", "--once", &id], None),
            "Error: etcdserver: requested lease not found",
        );
        assert_error(
            &run(ctl, &["put", "x", "y", "--lease", &id], None),
            "Error: etcdserver: requested lease not found",
        );
    });
}

#[test]
fn compaction_then_old_revision_is_gone() {
    for_each_transport(|_node, ctl, _t| {
        for v in ["1", "2", "3", "4"] {
            ok(ctl, &["put", "ck", v]); // revs 2..5
        }
        assert_eq!(ok(ctl, &["compaction", "4"]), "compacted revision 4\n");
        assert_error(
            &run(ctl, &["get", "ck", "--rev", "3"], None),
            "Error: etcdserver: mvcc: required revision has been compacted",
        );
        assert_eq!(ok(ctl, &["get", "ck", "--rev", "4"]), "ck\n3\n");
        assert_eq!(ok(ctl, &["get", "ck"]), "ck\n4\n");
        assert_error(
            &run(ctl, &["compaction", "2"], None),
            "Error: etcdserver: mvcc: required revision has been compacted",
        );
        assert_error(
            &run(ctl, &["get", "ck", "--rev", "99"], None),
            "Error: etcdserver: mvcc: required revision is a future revision",
        );
    });
}

#[test]
fn endpoint_status_health_and_member_list() {
    for_each_transport(|node, ctl, _t| {
        ok(ctl, &["put", "s", "1"]);
        let v = json(ctl, &["endpoint", "status", "-w", "json"]);
        let st = &v[0]["Status"];
        assert_eq!(
            v[0]["Endpoint"],
            Value::String(ctl.endpoint().into()),
            "{v}"
        );
        assert!(st["header"].is_object(), "header missing: {v}");
        let member = st["header"]["member_id"].as_u64();
        assert!(member.is_some_and(|m| m != 0), "{v}");
        assert_eq!(
            st["leader"].as_u64(),
            member,
            "the only member must be leader: {v}"
        );
        assert!(st["raftIndex"].as_u64().is_some_and(|i| i > 0), "{v}");
        assert!(st["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        assert_eq!(num(st, &["header", "revision"]), 2);

        let out = run(ctl, &["endpoint", "health"], None);
        assert!(out.success(), "{}", out.stderr);
        let line = format!(
            "{} is healthy: successfully committed proposal: took = ",
            ctl.endpoint()
        );
        assert!(out.stderr.starts_with(&line), "{}", out.stderr);
        let v = json(ctl, &["endpoint", "health", "-w", "json"]);
        assert_eq!(v[0]["health"], Value::Bool(true), "{v}");

        let v = json(ctl, &["member", "list", "-w", "json"]);
        let members = v["members"].as_array().cloned().unwrap_or_default();
        assert_eq!(members.len(), 1, "{v}");
        let m = &members[0];
        assert_eq!(m["ID"].as_u64(), v["header"]["member_id"].as_u64(), "{v}");
        assert_eq!(m["name"], Value::String("node1".into()), "{v}");
        let peer_suffix = format!("://127.0.0.1:{}", node.peer_port());
        let peers: Vec<&str> = m["peerURLs"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            peers.len() == 1 && peers[0].ends_with(&peer_suffix),
            "peer URL must be the peer listener: {v}"
        );
        let clients: Vec<String> = m["clientURLs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut served = vec![node.plain_endpoint()];
        served.extend(node.tls_endpoint());
        assert!(
            !clients.is_empty() && clients.iter().all(|c| served.contains(c)),
            "client URLs {clients:?} must be among the served endpoints {served:?}"
        );

        let plain = ok(ctl, &["member", "list"]);
        let fields: Vec<&str> = plain.trim_end().split(", ").collect();
        assert_eq!(fields.len(), 6, "{plain}");
        assert_eq!(fields[0], format!("{:x}", member.unwrap_or(0)));
        assert_eq!(&fields[1..3], &["started", "node1"]);
        assert_eq!(fields[3], peers[0]);
        assert_eq!(fields[5], "false");
    });
}

#[test]
fn snapshot_save_writes_a_file() {
    for_each_transport(|_node, ctl, _t| {
        ok(ctl, &["put", "snap", "shot"]);
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let path = dir.path().join("backup.db");
        let path_str = path.display().to_string();
        let out = run(ctl, &["snapshot", "save", &path_str], None);
        assert!(
            out.success(),
            "snapshot save failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(out.stdout, format!("Snapshot saved at {path_str}\n"));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "snapshot file missing or empty");
    });
}

#[test]
fn tls_listener_refuses_clients_without_certificates() {
    let kind = match TargetKind::from_env() {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    if kind == TargetKind::Etcd {
        // Explicit opt-in switch only: the reference etcd here has no TLS listener to probe.
        eprintln!("TUGBOAT_TEST_TARGET=etcd: TLS refusal applies to tugboatd only; not run");
        return;
    }
    let node = match TugboatNode::start(TugboatOptions::default()) {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    };
    {
        // The same listener does serve a client that presents the admin certificate.
        assert_eq!(ok(&node.etcdctl_tls(), &["put", "t", "1"]), "OK\n");
        let cacert = node.tls_files().cacert;
        let tls = node.tls_endpoint();
        // CA only, no client certificate.
        let args = vec![
            format!("--endpoints={tls}"),
            format!("--cacert={}", cacert.display()),
            "--dial-timeout=3s".to_string(),
            "--command-timeout=5s".to_string(),
        ];
        let out = match tugboat_testsuite::etcdctl(&args, &["get", "t"], None) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        assert!(
            !out.success(),
            "TLS endpoint answered a client without certificate: {}",
            out.stdout
        );
        assert!(!out.stdout.contains("t\n1"), "{}", out.stdout);
        // Plaintext gRPC against the TLS port.
        let port = tls.rsplit(':').next().unwrap_or_default();
        let args = vec![
            format!("--endpoints=http://127.0.0.1:{port}"),
            "--dial-timeout=3s".to_string(),
            "--command-timeout=5s".to_string(),
        ];
        let out = match tugboat_testsuite::etcdctl(&args, &["get", "t"], None) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        assert!(
            !out.success(),
            "TLS endpoint answered a plaintext client: {}",
            out.stdout
        );
    }
}
