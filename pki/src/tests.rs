use super::*;

use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;

fn identity() -> NodeIdentity {
    NodeIdentity {
        name: "node-1".to_string(),
        dns_names: vec!["node-1.example.test".to_string()],
        ip_addrs: vec!["127.0.0.7".parse().unwrap()],
    }
}

fn fresh() -> (tempfile::TempDir, PkiPaths) {
    let dir = tempfile::tempdir().unwrap();
    let paths = ensure_node_pki(dir.path(), &identity()).unwrap();
    (dir, paths)
}

fn all_files(paths: &PkiPaths) -> Vec<&PathBuf> {
    vec![
        &paths.ca_cert,
        &paths.ca_key,
        &paths.server_cert,
        &paths.server_key,
        &paths.peer_cert,
        &paths.peer_key,
        &paths.admin_cert,
        &paths.admin_key,
    ]
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from(read_cert_der(path).unwrap())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(paths: &PkiPaths) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&paths.ca_cert)).unwrap();
    Arc::new(roots)
}

fn server_verifier(paths: &PkiPaths) -> Arc<rustls::client::WebPkiServerVerifier> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots(paths), provider())
        .build()
        .unwrap()
}

fn client_verifier(paths: &PkiPaths) -> Arc<dyn ClientCertVerifier> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots(paths), provider())
        .build()
        .unwrap()
}

fn verify_as_server(paths: &PkiPaths, cert: &Path, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    server_verifier(paths)
        .verify_server_cert(&der(cert), &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

fn verify_as_client(paths: &PkiPaths, cert: &Path) -> Result<(), rustls::Error> {
    client_verifier(paths)
        .verify_client_cert(&der(cert), &[], UnixTime::now())
        .map(|_| ())
}

fn key_der(path: &Path) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut &fs::read(path).unwrap()[..])
        .unwrap()
        .unwrap()
}

#[test]
fn fresh_dir_creates_all_files_with_modes() {
    let (_dir, paths) = fresh();
    assert_eq!(mode(&paths.dir), 0o700);
    for file in all_files(&paths) {
        assert!(file.is_file(), "{} missing", file.display());
        let is_key = file.extension().is_some_and(|e| e == "key");
        assert_eq!(
            mode(file),
            if is_key { 0o600 } else { 0o644 },
            "{}",
            file.display()
        );
    }
    let leftovers: Vec<_> = fs::read_dir(&paths.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn ca_and_leaf_contents() {
    let (_dir, paths) = fresh();
    let ca_der = read_cert_der(&paths.ca_cert).unwrap();
    let ca = parse_x509(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(ca.subject().to_string(), "CN=tugboat-ca");
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign());
    let ca_days = (ca.validity().not_after.timestamp() - unix_now()) / 86400;
    assert!(
        (3640..=3660).contains(&ca_days),
        "CA valid for {ca_days} days, want ~10 years"
    );

    let admin_der = read_cert_der(&paths.admin_cert).unwrap();
    let admin = parse_x509(&admin_der).unwrap();
    assert_eq!(admin.subject().to_string(), "CN=admin, O=system:masters");
    let eku = admin.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!admin.is_ca());

    let server_der = read_cert_der(&paths.server_cert).unwrap();
    let server = parse_x509(&server_der).unwrap();
    assert_eq!(server.subject().to_string(), "CN=node-1, O=system:nodes");
    let eku = server.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let names = cert_alt_names(&paths.server_cert, &server).unwrap();
    for wanted in [
        "node-1",
        "localhost",
        "node-1.example.test",
        "127.0.0.1",
        "::1",
        "127.0.0.7",
    ] {
        assert!(
            names.contains(&AltName::parse(wanted).unwrap()),
            "{wanted} missing from {names:?}"
        );
    }
    if let Some(host) = local_hostname() {
        assert!(names.contains(&AltName::Dns(host)));
    }
    let leaf_days = (server.validity().not_after.timestamp() - unix_now()) / 86400;
    assert!(
        (365..=5 * 365).contains(&leaf_days),
        "leaf valid for {leaf_days} days"
    );

    let peer_der = read_cert_der(&paths.peer_cert).unwrap();
    let peer = parse_x509(&peer_der).unwrap();
    let eku = peer.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(cert_alt_names(&paths.peer_cert, &peer).unwrap(), names);
    assert_ne!(server.serial, peer.serial);
}

#[test]
fn second_call_is_a_no_op() {
    let (dir, paths) = fresh();
    let before: Vec<_> = all_files(&paths)
        .into_iter()
        .map(|f| {
            (
                fs::read(f).unwrap(),
                fs::metadata(f).unwrap().modified().unwrap(),
            )
        })
        .collect();
    let again = ensure_node_pki(dir.path(), &identity()).unwrap();
    assert_eq!(again, paths);
    let after: Vec<_> = all_files(&paths)
        .into_iter()
        .map(|f| {
            (
                fs::read(f).unwrap(),
                fs::metadata(f).unwrap().modified().unwrap(),
            )
        })
        .collect();
    assert!(before == after, "files changed on second call");
}

#[test]
fn san_change_reissues_server_and_peer_only() {
    let (dir, paths) = fresh();
    let ca_before = fs::read(&paths.ca_cert).unwrap();
    let ca_key_before = fs::read(&paths.ca_key).unwrap();
    let admin_before = fs::read(&paths.admin_cert).unwrap();
    let server_before = fs::read(&paths.server_cert).unwrap();
    let server_key_before = fs::read(&paths.server_key).unwrap();

    let mut id = identity();
    id.ip_addrs.push("10.1.2.3".parse().unwrap());
    id.dns_names.push("extra.example.test".to_string());
    ensure_node_pki(dir.path(), &id).unwrap();

    assert_eq!(fs::read(&paths.ca_cert).unwrap(), ca_before);
    assert_eq!(fs::read(&paths.ca_key).unwrap(), ca_key_before);
    assert_eq!(fs::read(&paths.admin_cert).unwrap(), admin_before);
    assert_ne!(fs::read(&paths.server_cert).unwrap(), server_before);
    assert_ne!(fs::read(&paths.server_key).unwrap(), server_key_before);
    verify_as_server(&paths, &paths.server_cert, "extra.example.test").unwrap();
    verify_as_server(&paths, &paths.peer_cert, "10.1.2.3").unwrap();
    // Names that were already there remain covered.
    verify_as_server(&paths, &paths.server_cert, "node-1").unwrap();

    // Fewer names than the certificate has is still covered: nothing to re-issue.
    let server_now = fs::read(&paths.server_cert).unwrap();
    ensure_node_pki(dir.path(), &identity()).unwrap();
    assert_eq!(fs::read(&paths.server_cert).unwrap(), server_now);
}

#[test]
fn chain_verifies_with_rustls() {
    let (_dir, paths) = fresh();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "node-1",
        "node-1.example.test",
        "127.0.0.7",
    ] {
        verify_as_server(&paths, &paths.server_cert, name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        verify_as_server(&paths, &paths.peer_cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify_as_server(&paths, &paths.server_cert, "other.example.test").is_err());
    assert!(verify_as_server(&paths, &paths.server_cert, "127.0.0.2").is_err());

    verify_as_client(&paths, &paths.admin_cert).unwrap();
    verify_as_client(&paths, &paths.peer_cert).unwrap();
    // server.crt carries serverAuth only and must not pass as a client.
    assert!(verify_as_client(&paths, &paths.server_cert).is_err());
    // admin.crt carries clientAuth only and must not pass as a server.
    assert!(verify_as_server(&paths, &paths.admin_cert, "localhost").is_err());

    // A certificate from another cluster's CA is rejected.
    let (_other_dir, other) = fresh();
    assert!(verify_as_client(&paths, &other.admin_cert).is_err());
    assert!(verify_as_server(&paths, &other.server_cert, "localhost").is_err());
}

fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    to.process_new_packets().unwrap();
}

#[test]
fn mutual_tls_handshake_with_loaded_files() {
    let (_dir, paths) = fresh();
    let server_tls = load_server_tls(&paths).unwrap();
    let admin_tls = load_admin_tls(&paths).unwrap();
    let certs = |pem: &[u8]| {
        rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let key = |pem: &[u8]| rustls_pemfile::private_key(&mut &pem[..]).unwrap().unwrap();
    for versions in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[versions])
            .unwrap()
            .with_client_cert_verifier(client_verifier(&paths))
            .with_single_cert(certs(&server_tls.cert_pem), key(&server_tls.key_pem))
            .unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[versions])
            .unwrap()
            .with_root_certificates(roots(&paths))
            .with_client_auth_cert(certs(&admin_tls.cert_pem), key(&admin_tls.key_pem))
            .unwrap();
        let mut client = rustls::Connection::from(
            rustls::ClientConnection::new(
                Arc::new(client_cfg),
                ServerName::try_from("127.0.0.1").unwrap(),
            )
            .unwrap(),
        );
        let mut server =
            rustls::Connection::from(rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap());
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let seen = server.peer_certificates().unwrap();
        assert_eq!(seen[0], der(&paths.admin_cert));
    }
}

#[test]
fn openssl_accepts_the_chain() {
    let (_dir, paths) = fresh();
    let run = |purpose: &str, cert: &Path| {
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-purpose")
            .arg(purpose)
            .arg("-CAfile")
            .arg(&paths.ca_cert)
            .arg(cert)
            .output()
            .expect("openssl must be installed for this test");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for (purpose, cert) in [
        ("sslserver", &paths.server_cert),
        ("sslserver", &paths.peer_cert),
        ("sslclient", &paths.peer_cert),
        ("sslclient", &paths.admin_cert),
    ] {
        let (ok, output) = run(purpose, cert);
        assert!(
            ok,
            "openssl verify -purpose {purpose} {}: {output}",
            cert.display()
        );
    }
    let (ok, _) = run("sslclient", &paths.server_cert);
    assert!(!ok, "server.crt must not verify as a client certificate");
}

#[test]
fn fingerprint_is_sha256_of_ca_der() {
    let (_dir, paths) = fresh();
    let fp = ca_fingerprint(&paths).unwrap();
    assert_eq!(fp.len(), 64);
    assert!(fp
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        fp,
        hex::encode(Sha256::digest(read_cert_der(&paths.ca_cert).unwrap()))
    );
    assert_eq!(
        cert_fingerprint(&fs::read(&paths.ca_cert).unwrap()).unwrap(),
        fp
    );
    let (_other_dir, other) = fresh();
    assert_ne!(ca_fingerprint(&other).unwrap(), fp);
    assert!(matches!(
        cert_fingerprint(b"garbage"),
        Err(PkiError::BadFile { .. })
    ));
}

fn joiner() -> NodeIdentity {
    NodeIdentity {
        name: "node-2".to_string(),
        dns_names: vec!["node-2.example.test".to_string()],
        ip_addrs: vec!["127.0.0.9".parse().unwrap()],
    }
}

#[test]
fn csr_signing_round_trip() {
    let (_dir, paths) = fresh();
    let csr = generate_node_csr(&joiner()).unwrap();
    let cert_pem = sign_node_csr(&paths, &csr.csr_pem, &joiner()).unwrap();
    let cert_der = cert_der_from_pem(cert_pem.as_bytes()).unwrap();
    let cert = parse_x509(&cert_der).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=node-2, O=system:nodes");
    assert!(!cert.is_ca());
    let key = KeyPair::from_pem(&csr.key_pem).unwrap();
    assert!(key_matches(&key, &cert));

    let ee = CertificateDer::from(cert_der.clone());
    for name in [
        "node-2",
        "node-2.example.test",
        "127.0.0.9",
        "localhost",
        "127.0.0.1",
    ] {
        server_verifier(&paths)
            .verify_server_cert(
                &ee,
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    client_verifier(&paths)
        .verify_client_cert(&ee, &[], UnixTime::now())
        .unwrap();
    // The key stays with the joiner and loads with rustls.
    rustls_pemfile::private_key(&mut csr.key_pem.as_bytes())
        .unwrap()
        .unwrap();

    // Signing the same CSR twice gives two certificates with distinct serials.
    let again = sign_node_csr(&paths, &csr.csr_pem, &joiner()).unwrap();
    let again_der = cert_der_from_pem(again.as_bytes()).unwrap();
    assert_ne!(parse_x509(&again_der).unwrap().serial, cert.serial);
}

#[test]
fn csr_with_foreign_names_is_refused() {
    let (_dir, paths) = fresh();
    let mut greedy = joiner();
    greedy.dns_names.push("node-1".to_string());
    let csr = generate_node_csr(&greedy).unwrap();
    match sign_node_csr(&paths, &csr.csr_pem, &joiner()) {
        Err(PkiError::CsrNameNotAllowed { node, names }) => {
            assert_eq!(node, "node-2");
            assert_eq!(names, "node-1");
        }
        other => panic!("expected CsrNameNotAllowed, got {other:?}"),
    }
    assert!(matches!(
        sign_node_csr(&paths, "not a csr", &joiner()),
        Err(PkiError::InvalidCsr { .. })
    ));
    // A CSR whose signature does not match its content is rejected.
    let csr_der = rustls_pemfile::csr(&mut csr.csr_pem.as_bytes())
        .unwrap()
        .unwrap();
    let mut bytes = csr_der.as_ref().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64_encode(&bytes)
    );
    assert!(matches!(
        sign_node_csr(&paths, &tampered, &greedy),
        Err(PkiError::InvalidCsr { .. })
    ));
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn missing_ca_key_is_fine_until_something_must_be_issued() {
    let (dir, paths) = fresh();
    fs::remove_file(&paths.ca_key).unwrap();
    ensure_node_pki(dir.path(), &identity()).unwrap();
    load_server_tls(&paths).unwrap();

    let mut id = identity();
    id.dns_names.push("new.example.test".to_string());
    match ensure_node_pki(dir.path(), &id) {
        Err(e @ PkiError::CaKeyMissing { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("ca.key") && text.contains("server certificate"),
                "{text}"
            );
            assert!(text.contains("new.example.test"), "{text}");
        }
        other => panic!("expected CaKeyMissing, got {other:?}"),
    }
    fs::remove_file(&paths.admin_cert).unwrap();
    assert!(matches!(
        ensure_node_pki(dir.path(), &identity()),
        Err(PkiError::CaKeyMissing { .. })
    ));
    assert!(matches!(
        sign_node_csr(
            &paths,
            &generate_node_csr(&joiner()).unwrap().csr_pem,
            &joiner()
        ),
        Err(PkiError::CaKeyMissing { .. })
    ));
}

/// Picks one file out of a node's PKI paths.
type FileOf = fn(&PkiPaths) -> &PathBuf;

#[test]
fn corrupt_files_give_errors_naming_the_file() {
    let cases: [(FileOf, &[u8]); 5] = [
        (|p| &p.server_cert, b"garbage"),
        (|p| &p.server_key, b"garbage"),
        (
            |p| &p.ca_cert,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ),
        (
            |p| &p.ca_key,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        (|p| &p.admin_cert, b"\xff\xfe\x00 binary"),
    ];
    for (file, content) in cases {
        let (dir, paths) = fresh();
        let path = file(&paths).clone();
        fs::write(&path, content).unwrap();
        match ensure_node_pki(dir.path(), &identity()) {
            Err(e @ PkiError::BadFile { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            other => panic!("{}: expected BadFile, got {other:?}", path.display()),
        }
    }
    let (_dir, paths) = fresh();
    fs::write(&paths.server_key, b"garbage").unwrap();
    match load_server_tls(&paths) {
        Err(e @ PkiError::BadFile { .. }) => assert!(e.to_string().contains("server.key"), "{e}"),
        other => panic!("expected BadFile, got {other:?}"),
    }
    fs::remove_file(&paths.peer_cert).unwrap();
    match load_peer_tls(&paths) {
        Err(e @ PkiError::Io { .. }) => assert!(e.to_string().contains("peer.crt"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn mismatched_or_missing_leaf_key_is_reissued() {
    let (dir, paths) = fresh();
    fs::write(
        &paths.server_key,
        generate_key("test").unwrap().serialize_pem(),
    )
    .unwrap();
    fs::remove_file(&paths.admin_key).unwrap();
    let ca_before = fs::read(&paths.ca_cert).unwrap();
    ensure_node_pki(dir.path(), &identity()).unwrap();
    assert_eq!(fs::read(&paths.ca_cert).unwrap(), ca_before);
    let server = read_cert_der(&paths.server_cert).unwrap();
    assert!(key_matches(
        &read_key(&paths.server_key).unwrap(),
        &parse_x509(&server).unwrap()
    ));
    verify_as_client(&paths, &paths.admin_cert).unwrap();
    assert_eq!(mode(&paths.admin_key), 0o600);
    key_der(&paths.admin_key);
}

#[test]
fn ca_states() {
    // Interrupted first start: ca.key written, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(dir.path());
    create_pki_dir(&paths.dir).unwrap();
    fs::write(&paths.ca_key, "half").unwrap();
    ensure_node_pki(dir.path(), &identity()).unwrap();
    verify_as_server(&paths, &paths.server_cert, "localhost").unwrap();

    // ca.crt lost while certificates signed by it exist: refuse to clobber ca.key.
    fs::remove_file(&paths.ca_cert).unwrap();
    assert!(matches!(
        ensure_node_pki(dir.path(), &identity()),
        Err(PkiError::CaCertMissing { .. })
    ));

    // Whole CA gone: a new one is made and every leaf re-issued under it.
    fs::remove_file(&paths.ca_key).unwrap();
    ensure_node_pki(dir.path(), &identity()).unwrap();
    verify_as_server(&paths, &paths.server_cert, "localhost").unwrap();
    verify_as_server(&paths, &paths.peer_cert, "localhost").unwrap();
    verify_as_client(&paths, &paths.admin_cert).unwrap();

    // A CA key that does not belong to ca.crt is an error, not a silent re-issue.
    fs::write(&paths.ca_key, generate_key("test").unwrap().serialize_pem()).unwrap();
    fs::remove_file(&paths.server_cert).unwrap();
    assert!(matches!(
        ensure_node_pki(dir.path(), &identity()),
        Err(PkiError::KeyMismatch { .. })
    ));
}

#[test]
fn invalid_identity_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut id = identity();
    id.dns_names.push("bad name!".to_string());
    assert!(matches!(
        ensure_node_pki(dir.path(), &id),
        Err(PkiError::InvalidIdentity { .. })
    ));
    id.dns_names.clear();
    id.name = "10.0.0.5".to_string();
    let paths = ensure_node_pki(dir.path(), &id).unwrap();
    verify_as_server(&paths, &paths.server_cert, "10.0.0.5").unwrap();
}

#[test]
fn tls_files_debug_hides_the_key() {
    let (_dir, paths) = fresh();
    let tls = load_peer_tls(&paths).unwrap();
    assert!(tls.key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    let shown = format!("{tls:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

fn pem_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from(cert_der_from_pem(pem.as_bytes()).unwrap())
}

#[test]
fn node_serving_cert_serves_its_name_and_address() {
    let (_dir, paths) = fresh();
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let issued =
        issue_node_serving_cert(&paths, "worker-7", &[ip], Duration::from_secs(3600)).unwrap();
    let verifier = server_verifier(&paths);
    for name in ["worker-7", "10.1.2.3", "localhost"] {
        let sn = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&pem_der(&issued.cert_pem), &[], &sn, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Server auth only: it must not pass as a client certificate.
    assert!(client_verifier(&paths)
        .verify_client_cert(&pem_der(&issued.cert_pem), &[], UnixTime::now())
        .is_err());
    assert_eq!(
        serving_problem(issued.cert_pem.as_bytes(), "worker-7").unwrap(),
        None
    );
    assert!(serving_problem(issued.cert_pem.as_bytes(), "other")
        .unwrap()
        .is_some());
    // The peer certificate serves the node name too (workers use it).
    let peer = fs::read(&paths.peer_cert).unwrap();
    assert_eq!(serving_problem(&peer, "node-1").unwrap(), None);
    let admin = fs::read(&paths.admin_cert).unwrap();
    assert!(serving_problem(&admin, "node-1").unwrap().is_some());
}

#[test]
fn client_cert_from_pem_matches_the_file_based_one() {
    let (_dir, paths) = fresh();
    let ca = fs::read(&paths.ca_cert).unwrap();
    let key = fs::read_to_string(&paths.ca_key).unwrap();
    let issued = issue_client_cert_from_pem(
        &ca,
        &key,
        "system:tugboat-apiserver",
        &[],
        Duration::from_secs(3600),
    )
    .unwrap();
    client_verifier(&paths)
        .verify_client_cert(&pem_der(&issued.cert_pem), &[], UnixTime::now())
        .unwrap();
    let subject = cert_subject(issued.cert_pem.as_bytes()).unwrap();
    assert_eq!(subject.common_name, "system:tugboat-apiserver");
    assert!(subject.organizations.is_empty());
    // A key of another CA is refused.
    let (_other_dir, other) = fresh();
    let other_key = fs::read_to_string(&other.ca_key).unwrap();
    assert!(matches!(
        issue_client_cert_from_pem(&ca, &other_key, "x", &[], Duration::from_secs(60)),
        Err(PkiError::KeyMismatch { .. })
    ));
}
