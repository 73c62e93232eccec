//! Clusters of `tugboatd` processes on loopback, formed the way users form
//! them: `tugboatd run` on the first, `tugboatd join <peer> --token …` on the
//! others. Membership, roles, serving from any member, restarts, removal,
//! refused joins, failover and recovery from quorum loss.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tugboat_testsuite::harness::{tugboatd_bin, JoinSpec};
use tugboat_testsuite::{Etcdctl, TugboatNode, TugboatOptions};

/// Options of a node that joins through `peer` with `token`.
fn joiner(name: &str, peer: &TugboatNode, token: &str, extra: &[&str]) -> TugboatOptions {
    TugboatOptions {
        name: name.into(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        join: Some(JoinSpec {
            peer: peer.peer_addr().to_string(),
            token: token.into(),
        }),
        ..TugboatOptions::default()
    }
}

fn first(name: &str, extra: &[&str]) -> TugboatNode {
    TugboatNode::start(TugboatOptions {
        name: name.into(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..TugboatOptions::default()
    })
    .expect("start the first node")
}

/// Starts `names` joining through `seed` at the same time (joins queue, none may fail).
fn join_all(seed: &TugboatNode, token: &str, names: &[&str], extra: &[&str]) -> Vec<TugboatNode> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| s.spawn(move || TugboatNode::start(joiner(n, seed, token, extra))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join thread").expect("joined node"))
            .collect()
    })
}

/// (name, is_learner) of every member, as `etcdctl member list -w json` reports them.
fn members(ctl: &Etcdctl) -> Vec<(String, bool)> {
    let out = ctl
        .ok(&["member", "list", "-w", "json"])
        .expect("member list");
    let v: Value = serde_json::from_str(&out).expect("member list json");
    let mut list: Vec<(String, bool)> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    list.sort();
    list
}

fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Voter and learner counts once they match `voters`/`learners` within `deadline`.
fn wait_roles(
    ctl: &Etcdctl,
    voters: usize,
    learners: usize,
    deadline: Duration,
) -> Vec<(String, bool)> {
    wait_for(
        &format!("{voters} voters and {learners} standbys"),
        deadline,
        || {
            let m = members(ctl);
            let l = m.iter().filter(|(_, learner)| *learner).count();
            (m.len() - l == voters && l == learners).then_some(m)
        },
    )
}

/// `endpoint status -w json` of one endpoint: (member id, leader id, raft term).
fn status(ctl: &Etcdctl) -> Option<(u64, u64, u64)> {
    let out = ctl.run(&["endpoint", "status", "-w", "json"], None).ok()?;
    if !out.success() {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    let s = &v[0]["Status"];
    Some((
        s["header"]["member_id"].as_u64()?,
        s["leader"].as_u64()?,
        s["raftTerm"].as_u64()?,
    ))
}

fn leader_of(nodes: &[TugboatNode]) -> usize {
    wait_for("a leader", Duration::from_secs(20), || {
        nodes.iter().position(|n| {
            status(&n.etcdctl()).is_some_and(|(me, leader, _)| me == leader && leader != 0)
        })
    })
}

/// How many keys start with `prefix` on `n`'s own replica (a serializable read).
fn key_count(n: &TugboatNode, prefix: &str) -> Option<u64> {
    let out = n
        .etcdctl()
        .ok(&[
            "get",
            prefix,
            "--prefix",
            "--keys-only",
            "-w",
            "json",
            "--consistency=s",
        ])
        .ok()?;
    serde_json::from_str::<Value>(&out).ok()?["count"].as_u64()
}

fn get_value(ctl: &Etcdctl, key: &str, serializable: bool) -> String {
    let mut args = vec!["get", key, "--print-value-only"];
    if serializable {
        args.push("--consistency=s");
    }
    ctl.ok(&args).expect("get").trim().to_string()
}

#[test]
fn three_nodes_join_and_every_member_serves() {
    let a = first("a", &[]);
    let token = a.create_token(&["--ttl", "10m"]).expect("token");
    let mut nodes = vec![a];
    nodes.extend(join_all(&nodes[0], &token, &["b", "c"], &[]));

    let roster = wait_roles(&nodes[0].etcdctl(), 3, 0, Duration::from_secs(20));
    assert_eq!(
        roster.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    for n in &nodes {
        assert_eq!(members(&n.etcdctl_tls()), roster, "member list over mTLS");
    }

    // Follower watches must match the leader's event for event.
    let leader = leader_of(&nodes);
    let follower = (leader + 1) % 3;
    let mut watches: Vec<_> = [leader, follower]
        .iter()
        .map(|i| {
            nodes[*i]
                .etcdctl()
                .spawn(&["watch", "--prefix", "k"])
                .expect("watch")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // A write through any member is read back from every member.
    for (i, w) in nodes.iter().enumerate() {
        w.etcdctl()
            .ok(&["put", &format!("k{i}"), &format!("via-{i}")])
            .expect("put");
        for r in &nodes {
            assert_eq!(
                get_value(&r.etcdctl(), &format!("k{i}"), false),
                format!("via-{i}")
            );
        }
    }
    w_delete(&nodes[follower]);
    let expected_lines = 3 * 3 + 2; // PUT, key, value per put; DELETE, key.
    let seen: Vec<Vec<String>> = watches
        .iter_mut()
        .map(|w| {
            w.wait_lines(expected_lines, Duration::from_secs(10))
                .expect("watch events")
        })
        .collect();
    assert_eq!(seen[0], seen[1], "follower watch differs from the leader's");
    assert_eq!(seen[0][0], "PUT");
    assert_eq!(seen[0][expected_lines - 2], "DELETE");

    // Leases through followers: the leader's clock answers keep-alives and TTLs.
    let f1 = &nodes[follower];
    let f2 = &nodes[(leader + 2) % 3];
    let granted = f1.etcdctl().ok(&["lease", "grant", "30"]).expect("grant");
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let kept = f2
        .etcdctl()
        .ok(&["lease", "keep-alive", "--once", &id])
        .expect("keep-alive");
    assert!(
        kept.contains("TTL(30)"),
        "keep-alive via a follower: {kept}"
    );
    let ttl = f1
        .etcdctl()
        .ok(&["lease", "timetolive", &id])
        .expect("timetolive");
    assert!(ttl.contains("granted with TTL(30s)"), "{ttl}");

    // A restarted follower resumes its membership.
    nodes[follower].restart().expect("restart follower");
    assert_eq!(members(&nodes[follower].etcdctl()), roster);
    nodes[follower]
        .etcdctl()
        .ok(&["put", "after-restart", "x"])
        .expect("put after restart");
    assert_eq!(
        get_value(&nodes[leader].etcdctl(), "after-restart", false),
        "x"
    );

    // Clean removal: the member leaves, stops, and the rest keeps an odd voter count.
    let victim = (leader + 2) % 3;
    let victim_name = ["a", "b", "c"][victim];
    let out = nodes[leader]
        .cli(&["node", "remove", victim_name])
        .expect("node remove");
    assert!(out.success(), "node remove: {}", out.stderr);
    let remaining = wait_roles(&nodes[leader].etcdctl(), 1, 1, Duration::from_secs(20));
    assert!(remaining.iter().all(|(n, _)| n != victim_name));
    wait_for(
        "the removed member to stop",
        Duration::from_secs(20),
        || (!nodes[victim].is_running()).then_some(()),
    );
    assert!(
        nodes[victim]
            .log_tail(20)
            .contains("removed from the cluster"),
        "{}",
        nodes[victim].log_tail(20)
    );
    nodes[leader]
        .etcdctl()
        .ok(&["put", "after-remove", "y"])
        .expect("put after remove");
}

fn w_delete(node: &TugboatNode) {
    node.etcdctl().ok(&["del", "k0"]).expect("delete");
}

#[test]
fn five_members_are_three_voters_and_two_standbys_and_more_are_workers() {
    let a = first("a", &["--dead-voter-timeout", "3"]);
    let token = a.create_token(&["--ttl", "10m"]).expect("token");
    let mut nodes = vec![a];
    nodes.extend(join_all(
        &nodes[0],
        &token,
        &["b", "c", "d", "e"],
        &["--dead-voter-timeout", "3"],
    ));
    let roster = wait_roles(&nodes[0].etcdctl(), 3, 2, Duration::from_secs(30));
    eprintln!("roles: {roster:?}");

    // A sixth node is a worker: no copy of the store, listed with a heartbeat.
    let worker_dir = tempfile::tempdir().expect("tempdir");
    let ports = tugboat_testsuite::free_ports(3).expect("ports");
    let mut worker = Command::new(tugboatd_bin().expect("tugboatd"))
        .args(["join", &nodes[0].peer_addr().to_string(), "--token", &token])
        .arg("--data-dir")
        .arg(worker_dir.path().join("data"))
        .args(["--name", "f"])
        .args(["--peer-listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--etcd-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[2])])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(worker_dir.path().join("log")).expect("log"))
        .spawn()
        .expect("spawn worker");
    let listed = wait_for(
        "the worker to be listed healthy",
        Duration::from_secs(30),
        || {
            let out = nodes[0].cli(&["node", "list"]).ok()?;
            out.stdout
                .lines()
                .any(|l| l.starts_with("f ") && l.contains("worker") && l.contains("healthy"))
                .then_some(out.stdout)
        },
    );
    eprintln!("{listed}");
    assert_eq!(
        members(&nodes[0].etcdctl()).len(),
        5,
        "a worker is no raft member"
    );
    assert!(
        !worker_dir.path().join("data/db").exists(),
        "a worker keeps no store"
    );
    let _ = worker.kill();
    let _ = worker.wait();

    // A voter that stays dead past --dead-voter-timeout is replaced by a standby.
    let leader = leader_of(&nodes);
    let names = ["a", "b", "c", "d", "e"];
    let victim = (0..5)
        .find(|i| *i != leader && roster.iter().any(|(n, l)| n == names[*i] && !l))
        .expect("a follower voter");
    nodes[victim].kill9();
    let killed_at = Instant::now();
    let after = wait_for(
        "a standby to replace the dead voter",
        Duration::from_secs(30),
        || {
            let m = members(&nodes[leader].etcdctl());
            let dead_is_learner = m.iter().any(|(n, l)| n == names[victim] && *l);
            let voters = m.iter().filter(|(_, l)| !l).count();
            (dead_is_learner && voters == 3).then_some(m)
        },
    );
    eprintln!(
        "voter {} replaced {:?} after its kill: {after:?}",
        names[victim],
        killed_at.elapsed()
    );
    nodes[leader]
        .etcdctl()
        .ok(&["put", "after-replace", "z"])
        .expect("write after replacement");

    // A removed standby hears nothing more; it asks the voters, learns it was removed, stops.
    let standby = (0..5)
        .find(|i| *i != victim && after.iter().any(|(n, l)| n == names[*i] && *l))
        .expect("a live standby");
    let out = nodes[leader]
        .cli(&["node", "remove", names[standby]])
        .expect("node remove");
    assert!(out.success(), "node remove: {}", out.stderr);
    let removed_at = Instant::now();
    wait_for(
        "the removed standby to stop",
        Duration::from_secs(40),
        || (!nodes[standby].is_running()).then_some(()),
    );
    eprintln!("removed standby stopped after {:?}", removed_at.elapsed());
}

/// Runs `tugboatd join` to completion (it must fail) and returns its stderr.
fn failed_join(peer: &str, token: &str, dir: &std::path::Path) -> String {
    let ports = tugboat_testsuite::free_ports(3).expect("ports");
    let out = Command::new(tugboatd_bin().expect("tugboatd"))
        .args(["join", peer, "--token", token])
        .arg("--data-dir")
        .arg(dir)
        .args(["--name", "intruder"])
        .args(["--peer-listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--etcd-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[2])])
        .env("NO_COLOR", "1")
        .output()
        .expect("run tugboatd join");
    assert!(!out.status.success(), "join must fail");
    assert!(
        !dir.join("pki").exists() && !dir.join("join.json").exists(),
        "nothing half-prepared"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_joins_are_refused_and_add_nothing() {
    let a = first("a", &[]);
    let other = first("other", &[]);
    let peer = a.peer_addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let good = a
        .create_token(&["--ttl", "10m", "--uses", "1"])
        .expect("token");
    // Wrong secret: flip one hex digit of the secret part.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let flipped = if parts[2].starts_with('0') { "1" } else { "0" };
    parts[2].replace_range(0..1, flipped);
    let err = failed_join(&peer, &parts.join("."), &data);
    assert!(err.contains("wrong secret"), "{err}");

    // A token of another cluster pins another CA: refused before anything secret is sent.
    let foreign = other.create_token(&[]).expect("token");
    let err = failed_join(&peer, &foreign, &data);
    assert!(err.contains("CA fingerprint mismatch"), "{err}");

    // Expired.
    let short = a.create_token(&["--ttl", "1s"]).expect("token");
    std::thread::sleep(Duration::from_millis(2100));
    let err = failed_join(&peer, &short, &data);
    assert!(err.contains("expired") || err.contains("unknown"), "{err}");

    // Garbage.
    let err = failed_join(&peer, "tgb1.nonsense", &data);
    assert!(err.contains("malformed join token"), "{err}");

    // Single use: the first node joins, a second node with the same token is refused.
    let b = TugboatNode::start(joiner("b", &a, &good, &[])).expect("b joins");
    let err = failed_join(&peer, &good, &data);
    assert!(err.contains("no uses left"), "{err}");
    let roster = members(&a.etcdctl());
    assert_eq!(roster.len(), 2, "{roster:?}");
    assert!(roster.iter().all(|(n, _)| n != "intruder"));
    drop(b);
}

#[test]
fn leader_kill9_under_load_elects_a_new_leader() {
    let a = first("a", &[]);
    let token = a.create_token(&[]).expect("token");
    let mut nodes = vec![a];
    nodes.extend(join_all(&nodes[0], &token, &["b", "c"], &[]));
    wait_roles(&nodes[0].etcdctl(), 3, 0, Duration::from_secs(20));
    let leader = leader_of(&nodes);
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| nodes[i].plain_endpoint())
        .collect();

    let rt = tugboat_testsuite::test_runtime();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let writers: Vec<_> = survivors
        .iter()
        .enumerate()
        .map(|(w, ep)| {
            let (ep, stop, acks) = (ep.clone(), stop.clone(), acks.clone());
            rt.spawn(async move {
                let channel = tugboat_testsuite::load::kvutil::plain_channel(&ep)
                    .await
                    .expect("channel");
                let mut kv = tugboat_testsuite::load::kvutil::kv(channel);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load/{w}/{n}");
                    n += 1;
                    let put = tugboat_store::pb::etcdserverpb::PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    };
                    match tokio::time::timeout(Duration::from_secs(3), kv.put(put)).await {
                        Ok(Ok(_)) => acks.lock().expect("acks").push((Instant::now(), key)),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    nodes[leader].kill9();
    wait_for("writes after the kill", Duration::from_secs(20), || {
        let acks = acks.lock().expect("acks");
        (acks.iter().filter(|(t, _)| *t > killed_at).count() > 20).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).expect("writer");
    }
    let acks = acks.lock().expect("acks").clone();
    let first_after = acks
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > killed_at)
        .min()
        .expect("acks after kill");
    let last_before = acks
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t <= killed_at)
        .max()
        .expect("acks before kill");
    eprintln!(
        "failover: last ack {:?} before the kill, first ack {:?} after it; write gap {:?}; {} acks in total",
        killed_at - last_before,
        first_after - killed_at,
        first_after - last_before,
        acks.len()
    );
    // Nothing acknowledged is lost, on either survivor.
    let survivor = (0..3).find(|i| *i != leader).expect("survivor");
    let got = nodes[survivor]
        .etcdctl()
        .ok(&["get", "load/", "--prefix", "--keys-only"])
        .expect("get");
    let present: std::collections::HashSet<&str> = got.lines().filter(|l| !l.is_empty()).collect();
    for (_, key) in &acks {
        assert!(
            present.contains(key.as_str()),
            "acknowledged {key} is missing"
        );
    }
    // The killed leader comes back as a follower and catches up.
    nodes[leader].restart().expect("restart old leader");
    let count = |n: &TugboatNode| key_count(n, "load/");
    let want = count(&nodes[survivor]).expect("count");
    wait_for(
        "the old leader to catch up",
        Duration::from_secs(20),
        || (count(&nodes[leader]) == Some(want)).then_some(()),
    );
}

#[test]
fn recover_turns_a_survivor_into_a_new_cluster() {
    let a = first("a", &[]);
    let token = a.create_token(&[]).expect("token");
    let mut nodes = vec![a];
    nodes.extend(join_all(&nodes[0], &token, &["b", "c"], &[]));
    wait_roles(&nodes[0].etcdctl(), 3, 0, Duration::from_secs(20));
    for i in 0..20 {
        nodes[i % 3]
            .etcdctl()
            .ok(&["put", &format!("r{i:02}"), "kept"])
            .expect("put");
    }
    // Quorum lost: two of three members are gone for good.
    nodes[1].kill9();
    nodes[2].kill9();
    let refused = nodes[0]
        .etcdctl()
        .with_command_timeout(Duration::from_secs(4))
        .run(&["put", "lost", "x"], None)
        .expect("put");
    assert!(!refused.success(), "a minority must not acknowledge writes");

    nodes[0].kill9();
    let out = Command::new(tugboatd_bin().expect("tugboatd"))
        .args(["recover", "--data-dir"])
        .arg(nodes[0].data_dir())
        .output()
        .expect("tugboatd recover");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "recover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dropped member"), "{stdout}");
    nodes[0].restart().expect("start the recovered member");
    let roster = members(&nodes[0].etcdctl());
    assert_eq!(roster, vec![("a".to_string(), false)]);
    let kept = nodes[0]
        .etcdctl()
        .ok(&["get", "r", "--prefix", "--keys-only"])
        .expect("get");
    assert_eq!(kept.lines().filter(|l| !l.is_empty()).count(), 20, "{kept}");
    nodes[0]
        .etcdctl()
        .ok(&["put", "after-recover", "ok"])
        .expect("write after recovery");
}

#[test]
fn peer_calls_without_a_client_certificate_are_refused() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    use tugboat_consensus::network::pb::{raft_peer_client::RaftPeerClient, RaftPayload};
    let a = first("a", &[]);
    let files = a.tls_files();
    let ca = std::fs::read(&files.cacert).expect("ca");
    let url = format!("https://{}", a.peer_addr());
    let rt = tugboat_testsuite::test_runtime();
    rt.block_on(async {
        // Joiners may connect without a certificate, but only to reach the join service.
        let anonymous = Channel::from_shared(url.clone())
            .expect("url")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))
            .expect("tls")
            .connect()
            .await
            .expect("TLS without a client certificate is accepted on the peer port");
        for call in ["vote", "append_entries", "forward"] {
            let mut client = RaftPeerClient::new(anonymous.clone());
            let req = tonic::Request::new(RaftPayload { data: vec![0] });
            let status = match call {
                "vote" => client.vote(req).await,
                "append_entries" => client.append_entries(req).await,
                _ => client.forward(req).await,
            }
            .expect_err("must be refused");
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{call}: {status:?}"
            );
        }
        // With the admin certificate the call reaches raft (and fails on the bogus payload).
        let cert = std::fs::read(&files.cert).expect("cert");
        let key = std::fs::read(&files.key).expect("key");
        let authenticated = Channel::from_shared(url)
            .expect("url")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca))
                    .identity(Identity::from_pem(cert, key)),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        let status = RaftPeerClient::new(authenticated)
            .vote(tonic::Request::new(RaftPayload { data: vec![0] }))
            .await
            .expect_err("garbage payload");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    });
}

#[test]
fn a_joiner_far_behind_catches_up_from_a_snapshot() {
    let a = first("a", &["--snapshot-count", "50"]);
    let rt = tugboat_testsuite::test_runtime();
    let endpoint = a.plain_endpoint();
    rt.block_on(async {
        let channel = tugboat_testsuite::load::kvutil::plain_channel(&endpoint)
            .await
            .expect("channel");
        let mut kv = tugboat_testsuite::load::kvutil::kv(channel);
        for i in 0..400 {
            kv.put(tugboat_store::pb::etcdserverpb::PutRequest {
                key: format!("old/{i:04}").into_bytes(),
                value: vec![b'x'; 512],
                ..Default::default()
            })
            .await
            .expect("put");
        }
    });
    let token = a.create_token(&[]).expect("token");
    let started = Instant::now();
    let b = TugboatNode::start(joiner("b", &a, &token, &["--snapshot-count", "50"])).expect("join");
    let keys = |n: &TugboatNode| key_count(n, "old/");
    wait_for(
        "the joiner to hold every key",
        Duration::from_secs(30),
        || (keys(&b) == Some(400)).then_some(()),
    );
    eprintln!("joiner caught up {:?} after its start", started.elapsed());
    // The leader purged the head of its log, so the joiner got there through a snapshot.
    let log = std::fs::read_to_string(b.log_path()).expect("log");
    assert!(
        log.contains("installed snapshot"),
        "no snapshot install in the joiner's log"
    );
}
