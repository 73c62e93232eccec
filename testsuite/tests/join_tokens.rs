//! `tugboat token create|list|revoke` against a running member: the token
//! pins the cluster CA and names the member's peer address, the store keeps
//! only a hash of the secret, and tokens vanish when revoked or expired.

use std::process::Command;
use std::time::{Duration, Instant};
use tugboat_consensus::join_token::JoinToken;
use tugboat_testsuite::{tugboatd_bin, TugboatNode, TugboatOptions};

fn tugboat(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let bin = tugboatd_bin()
        .expect("tugboatd binary")
        .with_file_name("tugboat");
    let out = Command::new(&bin)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tokens_are_pinned_hashed_revocable_and_expire() {
    let node = TugboatNode::start(TugboatOptions::default()).expect("start tugboatd");
    let data = node.data_dir().to_path_buf();

    let (ok, out, err) = tugboat(&data, &["token", "create", "--ttl", "1h", "--uses", "1"]);
    assert!(ok, "create failed: {err}");
    let token = JoinToken::parse(out.trim()).expect("a parseable token");
    let fingerprint =
        tugboat_pki::ca_fingerprint(&tugboat_pki::PkiPaths::new(&data)).expect("fingerprint");
    assert_eq!(
        token.ca_fingerprint, fingerprint,
        "the token pins this cluster's CA"
    );
    assert_eq!(
        token.peers,
        vec![node.peer_addr().to_string()],
        "the token names the member's peer address"
    );

    let stored = node
        .etcdctl()
        .ok(&["get", "/tugboat/join-tokens/", "--prefix"])
        .expect("etcdctl get");
    assert!(stored.contains(&token.id));
    assert!(
        !stored.contains(&token.secret),
        "the secret itself is never stored"
    );
    assert!(stored.contains(&tugboat_consensus::join_token::secret_hash(&token.secret)));

    let (ok, listed, err) = tugboat(&data, &["token", "list"]);
    assert!(ok, "list failed: {err}");
    assert!(
        listed.contains(&token.id) && listed.contains(" 1\n"),
        "list shows the id and 1 use: {listed}"
    );

    let (ok, _, err) = tugboat(&data, &["token", "revoke", &token.id]);
    assert!(ok, "revoke failed: {err}");
    let (ok, _, err) = tugboat(&data, &["token", "revoke", &token.id]);
    assert!(
        !ok && err.contains("no join token"),
        "a second revoke fails clearly: {err}"
    );

    let (ok, _, err) = tugboat(&data, &["token", "create", "--ttl", "0s"]);
    assert!(!ok && err.contains("longer than zero"), "{err}");

    // A short-lived token is removed by its lease once it expires.
    let (ok, out, err) = tugboat(&data, &["token", "create", "--ttl", "2s"]);
    assert!(ok, "create failed: {err}");
    let short = JoinToken::parse(out.trim()).expect("token");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed, _) = tugboat(&data, &["token", "list"]);
        if !listed.contains(&short.id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired token still listed: {listed}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn node_list_shows_the_member() {
    let node = TugboatNode::start(TugboatOptions::default()).expect("start tugboatd");
    let (ok, out, err) = tugboat(node.data_dir(), &["node", "list"]);
    assert!(ok, "node list failed: {err}");
    let row = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no member row in {out:?}"));
    assert!(row.starts_with("node1 "), "{row}");
    assert!(row.contains("voter (leader)"), "{row}");
    assert!(
        row.contains(&format!("https://{}", node.peer_addr())),
        "{row}"
    );
    assert!(row.contains(&node.tls_endpoint()), "{row}");
    assert!(row.trim_end().ends_with("healthy"), "{row}");
}
