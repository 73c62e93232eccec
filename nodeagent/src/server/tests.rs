use super::*;

use std::io::Cursor;

use http_body_util::Empty;
use tokio::io::AsyncWriteExt as _;
use tugboat_pki::{NodeIdentity, PkiPaths};

use crate::fake::{FakeConfig, FakeRuntime};
use crate::runtime::VmSpec;

const NODE: &str = "node-a";

struct Fixture {
    _dir: tempfile::TempDir,
    pki: PkiPaths,
    console_dir: PathBuf,
    runtime: Arc<FakeRuntime>,
    server: AgentServer,
}

fn spec(uid: &str) -> VmSpec {
    VmSpec {
        uid: uid.into(),
        namespace: "default".into(),
        name: format!("ship-{uid}"),
        image: "img".into(),
        ..VmSpec::default()
    }
}

async fn fixture(console: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = tugboat_pki::ensure_node_pki(
        &dir.path().join("data"),
        &NodeIdentity {
            name: "member".into(),
            ..NodeIdentity::default()
        },
    )
    .expect("pki");
    let serving = tugboat_pki::issue_node_serving_cert(
        &pki,
        NODE,
        &["127.0.0.1".parse().expect("ip")],
        Duration::from_secs(3600),
    )
    .expect("serving cert");
    let console_dir = dir.path().join("console");
    let runtime = Arc::new(FakeRuntime::new(FakeConfig {
        boot_delay: Duration::from_millis(10),
        console_dir: console.then(|| console_dir.clone()),
        ..FakeConfig::default()
    }));
    runtime.start(&spec("vm-1")).await.expect("start vm");
    let config = AgentServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        std::fs::read(&pki.ca_cert).expect("ca"),
        serving.cert_pem.into_bytes(),
        serving.key_pem.into_bytes(),
    );
    let server = AgentServer::start(runtime.clone(), config)
        .await
        .expect("server");
    Fixture {
        _dir: dir,
        pki,
        console_dir,
        runtime,
        server,
    }
}

impl Fixture {
    /// A TLS connection as `user` in `groups`, verifying the server as node `NODE`.
    async fn connect(
        &self,
        user: &str,
        groups: &[&str],
    ) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let cert =
            tugboat_pki::issue_client_cert(&self.pki, user, &groups, Duration::from_secs(600))
                .expect("client cert");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &std::fs::read(&self.pki.ca_cert).expect("ca")[..]) {
            roots.add(c.expect("ca pem")).expect("root");
        }
        let certs = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
            .expect("key")
            .expect("key");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config");
        let tcp = tokio::net::TcpStream::connect(self.server.local_addr())
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from(NODE).expect("name");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .expect("tls");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let mut s = self.connect(PROXY_USER, &[]).await;
        let resp = s
            .send_request(
                Request::get(path)
                    .header(header::HOST, NODE)
                    .body(Empty::new())
                    .expect("request"),
            )
            .await
            .expect("response");
        let code = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// Attaches to a console; `Err` carries the status and body of a refusal.
    async fn attach(
        &self,
        uid: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, (StatusCode, String)> {
        let mut s = self.connect(PROXY_USER, &[]).await;
        let resp = s
            .send_request(
                Request::get(format!("/vms/{uid}/console"))
                    .header(header::HOST, NODE)
                    .header(header::CONNECTION, "Upgrade")
                    .header(header::UPGRADE, CONSOLE_PROTOCOL)
                    .body(Empty::new())
                    .expect("request"),
            )
            .await
            .expect("response");
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            return Err((code, String::from_utf8_lossy(&body).into_owned()));
        }
        let up = hyper::upgrade::on(resp).await.expect("upgrade");
        Ok(TokioIo::new(up))
    }
}

/// Reads until `want` has been seen (or panics after 10 s).
async fn read_until(io: &mut (impl tokio::io::AsyncRead + Unpin), want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(want) {
        let n = tokio::time::timeout_at(deadline, io.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {want:?} within 10s; got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "EOF before {want:?}; got {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn logs_are_served_with_tail_and_limit() {
    let f = fixture(true).await;
    let (code, body) = f.get("/vms/vm-1/log").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("[fake] booting default/ship-vm-1"), "{body}");
    // A restart appends a second boot line; tailLines=1 shows only that one.
    f.runtime.stop("vm-1", true).await.expect("stop");
    f.runtime.start(&spec("vm-1")).await.expect("start");
    let (_, all) = f.get("/vms/vm-1/log").await;
    assert_eq!(all.lines().count(), 2, "{all}");
    let (_, tail) = f.get("/vms/vm-1/log?tailLines=1").await;
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(all.ends_with(&tail), "{all:?} / {tail:?}");
    let (_, limited) = f.get("/vms/vm-1/log?limitBytes=7").await;
    assert_eq!(limited, "[fake] ");
    let (code, body) = f.get("/vms/vm-1/log?limitBytes=0").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, body) = f.get("/vms/nope/log").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    let (code, _) = f.get("/vms/..%2f/log").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn console_echoes_and_takes_one_client() {
    let f = fixture(true).await;
    let mut io = f.attach("vm-1").await.expect("attach");
    read_until(&mut io, "fake console default/ship-vm-1").await;
    io.write_all(b"hello\n").await.expect("write");
    read_until(&mut io, "HELLO").await;
    let (code, body) = f.attach("vm-1").await.expect_err("second attach refused");
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("console already attached"), "{body}");
    // Detaching frees the console at once (a re-attach waits out the old session's end).
    drop(io);
    let mut io = f.attach("vm-1").await.expect("re-attach after detach");
    read_until(&mut io, "fake console").await;
    // What went through the console is in the log.
    let (_, log) = f.get("/vms/vm-1/log").await;
    assert!(log.contains("HELLO"), "{log}");
    // A stopped VM has no console socket.
    drop(io);
    f.runtime.stop("vm-1", true).await.expect("stop");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, body) = f.attach("vm-1").await.expect_err("stopped VM refused");
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(f.console_dir.join("vm-1.log").is_file());
}

#[tokio::test]
async fn follow_streams_appended_and_replaced_logs() {
    let f = fixture(true).await;
    let mut s = f.connect(PROXY_USER, &[]).await;
    let resp = s
        .send_request(
            Request::get("/vms/vm-1/log?follow=true")
                .header(header::HOST, NODE)
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = String::new();
    next(&mut body, &mut seen, "booting").await;
    let log = f.console_dir.join("vm-1.log");
    append(&log, b"appended line\n");
    next(&mut body, &mut seen, "appended line").await;
    // Rotated: a new file at the path is followed from its start.
    std::fs::rename(&log, f.console_dir.join("vm-1.log.1")).expect("rotate");
    std::fs::write(&log, b"fresh file\n").expect("recreate");
    next(&mut body, &mut seen, "fresh file").await;
    // Truncated in place: read again from the start.
    std::fs::write(&log, b"").expect("truncate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    append(&log, b"after truncation\n");
    next(&mut body, &mut seen, "after truncation").await;
}

async fn next(body: &mut Incoming, seen: &mut String, want: &str) {
    while !seen.contains(want) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 10s: {seen:?}"))
            .expect("frame")
            .expect("frame ok");
        if let Ok(d) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("append");
}

#[tokio::test]
async fn only_the_apiserver_and_masters_are_served() {
    let f = fixture(true).await;
    let mut s = f.connect("alice", &["developers"]).await;
    let resp = s
        .send_request(
            Request::get("/vms/vm-1/log")
                .header(header::HOST, NODE)
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let mut s = f.connect("root", &["system:masters"]).await;
    let resp = s
        .send_request(
            Request::get("/healthz")
                .header(header::HOST, NODE)
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_runtime_without_consoles_says_so() {
    let f = fixture(false).await;
    let (code, body) = f.get("/vms/vm-1/log").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("without consoles"), "{body}");
    let (code, body) = f.attach("vm-1").await.expect_err("refused");
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[test]
fn tail_offsets() {
    let text = b"a\nbb\nccc\n";
    let off = |n| tail_offset(&mut Cursor::new(&text[..]), text.len() as u64, n).expect("tail");
    assert_eq!(off(0), 9);
    assert_eq!(off(1), 5);
    assert_eq!(off(2), 2);
    assert_eq!(off(3), 0);
    assert_eq!(off(10), 0);
    let open = b"a\nbb";
    assert_eq!(
        tail_offset(&mut Cursor::new(&open[..]), 4, 1).expect("tail"),
        2
    );
    // Longer than one read chunk.
    let mut big = vec![b'x'; 20_000];
    big.push(b'\n');
    big.extend_from_slice(b"last\n");
    assert_eq!(
        tail_offset(&mut Cursor::new(&big[..]), big.len() as u64, 1).expect("tail"),
        20_001
    );
}

#[test]
fn log_options_parse() {
    assert_eq!(
        LogOptions::parse(Some("follow=true&tailLines=3&limitBytes=10&x=y")),
        Ok(LogOptions {
            follow: true,
            tail_lines: Some(3),
            limit_bytes: Some(10),
        })
    );
    assert_eq!(LogOptions::parse(None), Ok(LogOptions::default()));
    assert!(LogOptions::parse(Some("tailLines=-1")).is_err());
    assert!(LogOptions::parse(Some("follow=maybe")).is_err());
    assert!(LogOptions::parse(Some("limitBytes=0")).is_err());
}

#[tokio::test]
async fn a_session_ends_when_the_client_goes_even_if_the_vm_side_stays() {
    let (client, client_far) = tokio::io::duplex(64);
    let (vm, mut vm_far) = tokio::io::duplex(64);
    let session = tokio::spawn(pipe(client_far, vm));
    let mut client = client;
    client.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    vm_far.read_exact(&mut got).await.expect("vm reads");
    assert_eq!(&got, b"ping");
    // The client leaves; the VM end stays open and silent.
    drop(client);
    let end = tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("session ended")
        .expect("task");
    assert!(end.contains("client closed"), "{end}");
    drop(vm_far);
}
