//! Differential test: one scripted etcdctl session run against a fresh Debian etcd 3.4 and a fresh
//! tugboatd; normalised outputs (revisions included) must match operation by operation.
//!
//! etcdctl 3.4 has no `get --count-only` (added in 3.5), so counts are checked through `count` in
//! `-w json` answers instead.
//!
//! With `TUGBOAT_TEST_TARGET=etcd` the candidate is a second etcd, which validates the script and
//! the normalisation themselves.

use tugboat_testsuite::session::{compare_runs, run_session, transcript, Capture, Shape, Step};
use tugboat_testsuite::{start_server, EtcdNode, EtcdOptions, ServerNode, TargetKind};

fn txn(flags: &str, body: &str) -> Step {
    Step::txn(flags, body)
}

/// The session. Comments give the store revision after each write (a fresh store starts at 1).
fn script() -> Vec<Step> {
    vec![
        // --- puts
        Step::cmd("put foo bar -w json"),            // rev 2
        Step::cmd("put foo bar2 --prev-kv -w json"), // rev 3
        Step::cmd("put foo2 v2 -w json"),            // rev 4
        Step::cmd("put foo3 v3"),                    // rev 5
        Step::cmd("put zoo zz --prev-kv -w json"),   // rev 6 (no prev_kv)
        Step::cmd("put foo3 v3b -w json"),           // rev 7
        // --- range reads
        Step::cmd("get foo -w json"),
        Step::cmd("get foo --prefix -w json"),
        Step::cmd("get foo foo3 -w json"),
        Step::cmd("get foo --prefix --limit 2 -w json"),
        Step::cmd("get foo --rev 2 -w json"),
        Step::cmd("get foo --prefix --rev 4 -w json"),
        Step::cmd("get --from-key foo2 -w json"),
        Step::cmd("get foo --prefix --sort-by=MODIFY --order=DESCEND -w json"),
        Step::cmd("get foo --prefix --sort-by=CREATE --order=ASCEND -w json"),
        Step::cmd("get foo --prefix --sort-by=VERSION --order=DESCEND -w json"),
        Step::cmd("get foo --prefix --sort-by=VALUE --order=DESCEND -w json"),
        Step::cmd("get foo --prefix --sort-by=KEY --order=DESCEND --limit 2 -w json"),
        Step::cmd("get foo --prefix --order=DESCEND -w json"),
        Step::cmd("get foo --prefix --keys-only -w json"),
        Step::cmd("get foo --prefix --keys-only"),
        Step::cmd("get foo --print-value-only"),
        Step::cmd("get foo --prefix"),
        Step::cmd("get nothing -w json"),
        Step::cmd("get foo --consistency=s -w json"),
        Step::args(vec![
            "get".into(),
            "".into(),
            "--from-key".into(),
            "--limit=3".into(),
            "-w".into(),
            "json".into(),
        ]),
        // --- errors that reach the server
        Step::cmd("get foo --rev 1000"),
        Step::args(vec!["put".into(), "".into(), "v".into()]),
        Step::cmd("put missing --ignore-value"),
        // --- put flags
        Step::cmd("put foo --ignore-value -w json"), // rev 8, value stays bar2
        Step::cmd("get foo -w json"),
        // --- leases
        Step::cmd("lease grant 300 -w json").capture(Capture::LeaseJson("L1")),
        Step::cmd("lease grant 9000000001"),
        Step::cmd("put leased lv --lease={L1} -w json"), // rev 9
        Step::cmd("get leased -w json"),
        Step::cmd("put leased lv2 --ignore-lease -w json"), // rev 10, keeps L1
        Step::cmd("get leased -w json"),
        Step::cmd("lease timetolive {L1} --keys -w json"),
        Step::cmd("lease timetolive {L1}"),
        Step::cmd("lease grant 600").capture(Capture::LeaseText("L2")),
        Step::cmd("lease list -w json"),
        Step::cmd("lease keep-alive --once {L1} -w json"),
        Step::cmd("lease keep-alive --once {L2}"),
        Step::cmd("lease keep-alive --once 1234"),
        Step::cmd("lease revoke 1234"),
        Step::cmd("put x y --lease 1234"),
        Step::cmd("lease timetolive 1234 -w json"),
        Step::cmd("lease revoke {L1} -w json"), // rev 11: deletes "leased"
        Step::cmd("get leased -w json"),
        Step::cmd("lease timetolive {L1}"),
        Step::cmd("lease list"),
        Step::cmd("put withl2 v --lease={L2}"), // rev 12
        // --- deletes
        Step::cmd("del foo3 -w json"),                   // rev 13
        Step::cmd("del foo --prefix --prev-kv -w json"), // rev 14: foo, foo2
        Step::cmd("del nothing -w json"),
        Step::cmd("del zoo"),           // rev 15
        Step::cmd("del a z --prev-kv"), // rev 16: withl2
        // --- transactions
        Step::cmd("put t1 1"), // rev 17
        txn(
            "-w json",
            "value(\"t1\") = \"1\"\n\nput t1 2\nget t1\n\nput t1 fail\n\n",
        ),
        txn(
            "-w json",
            "version(\"t1\") = \"1\"\n\nput t1 never\n\nget t1\n\n",
        ),
        txn(
            "",
            "create(\"t1\") > \"0\"\nmod(\"t1\") > \"1\"\n\nput t2 x\ndel t1\n\nput t2 never\n\n",
        ),
        txn("", "mod(\"nokey\") = \"0\"\n\nput nokey created\n\n\n"),
        txn("", "\nput d 1\nput d 2\n\n\n"),
        txn("", "value(\"t2\") != \"x\"\n\nput t3 never\n\nput t3 y\n\n"),
        txn("-w json", "\nget t --prefix\n\n\n"),
        Step::cmd("get t --prefix -w json"),
        // --- compaction
        Step::cmd("compaction 5"),
        Step::cmd("get foo --rev 3"),
        Step::cmd("get foo3 --rev 5 -w json"),
        Step::cmd("compaction 3"),
        Step::cmd("compaction 1000"),
        Step::to_exit("watch --rev 2 foo"),
        // --- watch history replay (plain output is independent of event batching)
        Step::watch("watch --rev 16 --prefix t --prev-kv", 19),
        Step::watch("watch --rev 11 leased", 3),
        // --- cluster and maintenance
        Step::cmd("member list -w json").shape(Shape::MemberList),
        Step::cmd("member list").shape(Shape::MemberList),
        Step::cmd("endpoint status -w json").shape(Shape::EndpointStatus),
        Step::cmd("endpoint health -w json").shape(Shape::EndpointHealth),
        Step::cmd("endpoint health").shape(Shape::EndpointHealth),
        Step::cmd("get --from-key a -w json"),
    ]
}

#[test]
fn etcdctl_session_matches_etcd() {
    let candidate_kind = match TargetKind::from_env() {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    let steps = script();
    assert!(
        steps.len() >= 40,
        "the session must have at least 40 operations"
    );

    let reference = match EtcdNode::start(EtcdOptions::default()) {
        Ok(n) => n,
        Err(e) => panic!("starting the reference etcd failed: {e}"),
    };
    let expected = match run_session(&reference.etcdctl(), &steps) {
        Ok(r) => r,
        Err(e) => panic!("running the session against etcd failed: {e}"),
    };
    drop(reference);
    println!(
        "=== etcd 3.4 transcript ===\n{}",
        transcript(&steps, &expected)
    );

    let candidate: Box<dyn ServerNode> = match start_server(candidate_kind) {
        Ok(n) => n,
        Err(e) => panic!("starting {candidate_kind} failed: {e}"),
    };
    let actual = match run_session(&candidate.etcdctl(), &steps) {
        Ok(r) => r,
        Err(e) => panic!("running the session against {candidate_kind} failed: {e}"),
    };

    println!(
        "=== {candidate_kind} transcript ===\n{}",
        transcript(&steps, &actual)
    );
    if let Some(report) = compare_runs(&steps, &expected, &actual) {
        panic!(
            "{candidate_kind} differs from etcd 3.4 (normalised; etcd first, {candidate_kind} second):\n{report}"
        );
    }
}
