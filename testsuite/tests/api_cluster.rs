//! The apiserver in a 3-member cluster: every member serves the API, a write through one
//! member is read back at once through another (lists are consistent, not eventually so), a
//! watch on one member sees writes made through the others, and the API keeps serving writes
//! after the first member stops.

use std::time::Duration;
use tugboat_testsuite::harness::JoinSpec;
use tugboat_testsuite::kube::{wait_api_ready, Kubectl};
use tugboat_testsuite::{TugboatNode, TugboatOptions};

fn start(name: &str, join: Option<(&TugboatNode, &str)>) -> TugboatNode {
    TugboatNode::start(TugboatOptions {
        name: name.into(),
        api: true,
        join: join.map(|(peer, token)| JoinSpec {
            peer: peer.peer_addr().to_string(),
            token: token.into(),
        }),
        ..TugboatOptions::default()
    })
    .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

fn ship_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  image: example.org/img:1\n  shipClass: lightweight\n"
    )
}

#[test]
fn every_member_serves_the_api_consistently() {
    let mut a = start("a", None);
    let token = a.create_token(&["--ttl", "10m"]).expect("token");
    let b = start("b", Some((&a, &token)));
    let c = start("c", Some((&a, &token)));
    for n in [&a, &b, &c] {
        wait_api_ready(n).unwrap_or_else(|e| panic!("{e}"));
    }
    let ka = Kubectl::admin(&a).expect("kubectl a");
    let kb = Kubectl::admin(&b).expect("kubectl b");
    let kc = Kubectl::admin(&c).expect("kubectl c");

    // A watch on c, then writes through a and b: c sees them all.
    let mut watch = kc
        .spawn(&["get", "ships", "-w", "-o", "name"])
        .expect("watch on c");
    for (k, name) in [(&ka, "via-a"), (&kb, "via-b")] {
        k.ok_stdin(&["apply", "-f", "-"], &ship_yaml(name))
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        // Read-your-write through another member, without waiting.
        let got = kc
            .jsonpath(&["get", "ship", name], "{.metadata.name}")
            .unwrap_or_else(|e| panic!("get {name} through c: {e}"));
        assert_eq!(got, name);
    }
    kb.ok(&["label", "ship", "via-a", "moved=yes"])
        .expect("label through b");
    let mut from = 0;
    // Created through a, created through b, labelled through b: three events, in that order.
    for line in ["ship/via-a", "ship/via-b", "ship/via-a"] {
        from = watch
            .wait_for_line(from, line, Duration::from_secs(20), |l| l.trim() == line)
            .unwrap_or_else(|e| panic!("watch on c never printed {line:?}: {e}"))
            + 1;
    }
    watch.kill();

    // The first member stops; the others keep serving writes and reads.
    a.sigterm().expect("stop a");
    kb.ok_stdin(&["apply", "-f", "-"], &ship_yaml("after-a"))
        .expect("write through b with a down");
    let names = kc
        .jsonpath(&["get", "ships"], "{.items[*].metadata.name}")
        .expect("list through c");
    assert_eq!(names, "after-a via-a via-b");
}
