//! VM images end to end with the real `tugboat` CLI, Debian's `docker-registry` (the CNCF
//! distribution registry) and `skopeo` as a third-party client reading our artifact:
//! build → push → pull into an empty store → save → load into a node's cache → rm.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use tugboat_testsuite::{file_tail, free_ports, tugboat_cli_bin};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const SKOPEO_BIN: &str = "/usr/bin/skopeo";

/// Panics with the install command when a tool the test drives is missing (never skips).
fn require(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} not found: install it with `apt-get install {package}`"
    );
    p
}

fn qemu_img() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("qemu-img");
        if p.is_file() {
            return p;
        }
    }
    panic!("qemu-img not found: install it with `apt-get install qemu-utils`");
}

/// A `docker-registry serve` on a loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let bin = require(REGISTRY_BIN, "docker-registry");
        let port = free_ports(1).expect("free port")[0];
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn docker-registry");
        let mut reg = Registry { child, port, log };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited with {status}:\n{}",
                    file_tail(&self.log, 30)
                );
            }
            if http_get_status(self.port, "/v2/") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer GET /v2/ within 30 s:\n{}",
                file_tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of a plain HTTP/1.0 GET, or None when nothing answers.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the `tugboat` CLI with `args`, with a clean environment for the image commands.
fn tugboat(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(tugboat_cli_bin().expect("tugboat binary"));
    cmd.args(args)
        .env_remove("TUGBOAT_IMAGE_DIR")
        .env_remove("TUGBOAT_INSECURE_REGISTRIES")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run tugboat")
}

fn ok(args: &[&str], envs: &[(&str, &str)]) -> (String, String) {
    let started = Instant::now();
    let out = tugboat(args, envs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "tugboat {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!(
        "tugboat {:?}: {:.2}s",
        args.first(),
        started.elapsed().as_secs_f64()
    );
    (stdout, stderr)
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Every file of a store's `blobs/sha256` and `files/sha256`, by name, with its hash.
fn store_contents(store: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "files/sha256"] {
        let dir = store.join(sub);
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let name = format!("{sub}/{}", p.file_name().unwrap().to_string_lossy());
            out.push((name, sha256_hex(&p)));
        }
    }
    out.sort();
    out
}

#[test]
fn build_push_pull_save_load_rm_against_a_real_registry() {
    let started = Instant::now();
    require(SKOPEO_BIN, "skopeo");
    let qemu_img = qemu_img();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let registry = Registry::start(&root.join("registry"));
    let host = registry.host();

    // Build context: a real (empty) qcow2, a 5 MiB random "kernel" (more than one 4 MiB upload
    // chunk) and a small random "initrd".
    let ctx = root.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    let st = Command::new(&qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(ctx.join("disk.qcow2"))
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img create failed");
    let mut rng = rand::rng();
    let mut kernel = vec![0u8; 5 << 20];
    rng.fill_bytes(&mut kernel);
    std::fs::write(ctx.join("vmlinuz"), &kernel).unwrap();
    let mut initrd = vec![0u8; 100_000];
    rng.fill_bytes(&mut initrd);
    std::fs::write(ctx.join("initrd.img"), &initrd).unwrap();
    std::fs::write(
        ctx.join("Imagefile"),
        "# test image\nFROM disk.qcow2   # the base disk\nARCH amd64\nKERNEL vmlinuz\nINITRD initrd.img\nCMDLINE console=ttyS0 \\\n   root=/dev/vda\nLABEL suite=images\n",
    )
    .unwrap();

    let a = root.join("a");
    let b = root.join("b");
    let node = root.join("node");
    let a_s = a.to_str().unwrap();
    let b_s = b.to_str().unwrap();
    let reference = format!("{host}/test/vm:v1");
    let r = reference.as_str();

    // A broken Imagefile fails with its line number.
    std::fs::write(ctx.join("Broken"), "FROM disk.qcow2\nINITRD initrd.img\n").unwrap();
    let out = tugboat(
        &[
            "build",
            "-f",
            ctx.join("Broken").to_str().unwrap(),
            "-t",
            r,
            "--image-dir",
            a_s,
            ctx.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Broken:2: INITRD needs a KERNEL"),
        "{stderr}"
    );

    // build (the Imagefile defaults to CONTEXT/Imagefile).
    let (digest, _) = ok(
        &["build", "-t", r, "--image-dir", a_s, ctx.to_str().unwrap()],
        &[],
    );
    let digest = digest.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    // push, then push again: every blob is already there.
    let (pushed, stderr) = ok(
        &["push", r, "--insecure-registry", &host, "--image-dir", a_s],
        &[],
    );
    assert_eq!(pushed.trim(), digest);
    assert!(
        stderr.contains("pushing vmlinuz") || stderr.contains("vmlinuz"),
        "{stderr}"
    );
    let (_, stderr) = ok(
        &["push", r, "--insecure-registry", &host, "--image-dir", a_s],
        &[],
    );
    assert_eq!(
        stderr.matches("already in the registry").count(),
        4,
        "second push re-sent blobs:\n{stderr}"
    );

    // skopeo, a third-party client, reads our manifest with our media types.
    let out = Command::new(SKOPEO_BIN)
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{r}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw_path = root.join("manifest.json");
    std::fs::write(&raw_path, &out.stdout).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw_path)),
        digest,
        "manifest bytes differ"
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["artifactType"], "application/vnd.tugboat.image.v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.tugboat.metadata.v1+json"
    );
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.tugboat.disk.qcow2.v1+gzip",
            "application/vnd.tugboat.kernel.v1",
            "application/vnd.tugboat.initrd.v1"
        ]
    );
    assert_eq!(
        m["layers"][1]["annotations"]["org.opencontainers.image.title"],
        "vmlinuz"
    );
    assert_eq!(m["layers"][1]["size"], 5 << 20);

    // pull into an empty store (insecure host from the environment this time).
    let (pulled, _) = ok(
        &["pull", r, "--image-dir", b_s],
        &[(
            "TUGBOAT_INSECURE_REGISTRIES",
            &format!("example.invalid,{host}"),
        )],
    );
    assert_eq!(pulled.trim(), digest);
    assert_eq!(
        store_contents(&a),
        store_contents(&b),
        "pulled store differs from the built one"
    );
    let disk_layer = m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let extracted = b.join("files/sha256").join(disk_layer);
    assert_eq!(sha256_hex(&extracted), sha256_hex(&ctx.join("disk.qcow2")));
    let kernel_layer = m["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert_eq!(
        std::fs::read(b.join("blobs/sha256").join(kernel_layer)).unwrap(),
        kernel
    );

    // image ls shows it, in a table and as JSON.
    let (table, _) = ok(&["image", "ls", "--image-dir", b_s], &[]);
    assert!(table.starts_with("REFERENCE"), "{table}");
    assert!(
        table.contains(r) && table.contains(&digest[..19]),
        "{table}"
    );
    let (json, _) = ok(
        &["image", "ls", "--format", "json", "--image-dir", b_s],
        &[],
    );
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list[0]["digest"], digest.as_str());
    assert_eq!(list[0]["references"][0], r);
    assert_eq!(
        list[0]["metadata"]["cmdline"],
        "console=ttyS0 root=/dev/vda"
    );
    assert_eq!(list[0]["metadata"]["bootMode"], "direct");

    // A tag the registry does not have.
    let out = tugboat(
        &[
            "pull",
            &format!("{host}/test/vm:nope"),
            "--insecure-registry",
            &host,
            "--image-dir",
            b_s,
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found"), "{stderr}");

    // save → load into a node's cache (--data-dir DATA means DATA/images), no registry involved.
    let archive = root.join("vm.tar");
    ok(
        &[
            "image",
            "save",
            r,
            "-o",
            archive.to_str().unwrap(),
            "--image-dir",
            b_s,
        ],
        &[],
    );
    drop(registry);
    let (loaded, _) = ok(
        &[
            "image",
            "load",
            archive.to_str().unwrap(),
            "--data-dir",
            node.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(loaded.trim(), format!("Loaded: {r}"));
    assert_eq!(store_contents(&node.join("images")), store_contents(&a));

    // rm untags and deletes; the store is empty again.
    let node_images = node.join("images");
    let (removed, _) = ok(
        &[
            "image",
            "rm",
            r,
            "--image-dir",
            node_images.to_str().unwrap(),
        ],
        &[],
    );
    assert!(removed.contains(&format!("Untagged: {r}")), "{removed}");
    assert!(removed.contains(&format!("Deleted: {digest}")), "{removed}");
    assert!(store_contents(&node_images).is_empty());
    let (table, _) = ok(
        &["image", "ls", "--image-dir", node_images.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        table.trim(),
        "REFERENCE   DIGEST   SIZE   CREATED   LAST USED"
    );
    eprintln!("images end to end: {:.1}s", started.elapsed().as_secs_f64());
}

/// Registry credentials come from docker's `config.json` (`$DOCKER_CONFIG`), as `docker login`
/// writes it: against Debian's docker-registry with htpasswd auth, push and pull work with an
/// `auth` entry or a `username`/`password` entry, and are refused without or with a wrong one.
#[test]
fn push_and_pull_with_docker_config_credentials() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let registry = tugboat_testsuite::vmassets::Registry::start_with_auth("tugboat", "s3cret-Pass")
        .unwrap_or_else(|e| panic!("{e}"));
    let host = registry.host.clone();
    let ctx = root.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    let mut kernel = vec![0u8; 64 << 10];
    rand::rng().fill_bytes(&mut kernel);
    std::fs::write(ctx.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(ctx.join("Imagefile"), "FROM scratch\nKERNEL vmlinuz\n").unwrap();
    let a = root.join("a");
    let b = root.join("b");
    let reference = format!("{host}/private/vm:v1");
    let r = reference.as_str();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    ok(
        &[
            "build",
            "-f",
            ctx.join("Imagefile").to_str().unwrap(),
            "-t",
            r,
            "--image-dir",
            a_s,
            ctx.to_str().unwrap(),
        ],
        &[],
    );

    let config_dir = |name: &str, json: String| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), json).unwrap();
        d.to_str().unwrap().to_string()
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let none = config_dir("none", "{}".into());
    let wrong = config_dir(
        "wrong",
        format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            b64("tugboat:not-the-password")
        ),
    );
    let right_auth = config_dir(
        "right-auth",
        format!(
            r#"{{"auths": {{"http://{host}": {{"auth": "{}"}}}}}}"#,
            b64("tugboat:s3cret-Pass")
        ),
    );
    let right_fields = config_dir(
        "right-fields",
        format!(
            r#"{{"auths": {{"{host}": {{"username": "tugboat", "password": "s3cret-Pass"}}}}}}"#
        ),
    );
    let push = ["push", r, "--image-dir", a_s, "--insecure-registry", &host];
    for cfg in [&none, &wrong] {
        let out = tugboat(&push, &[("DOCKER_CONFIG", cfg)]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "push with {cfg} must be refused");
        assert!(
            stderr.contains("unauthorized") || stderr.contains("401"),
            "push with {cfg}: {stderr}"
        );
    }
    let (pushed, _) = ok(&push, &[("DOCKER_CONFIG", &right_auth)]);
    let pull = ["pull", r, "--image-dir", b_s, "--insecure-registry", &host];
    let out = tugboat(&pull, &[("DOCKER_CONFIG", &none)]);
    assert!(!out.status.success(), "anonymous pull must be refused");
    let (pulled, _) = ok(&pull, &[("DOCKER_CONFIG", &right_fields)]);
    let digest = |s: &str| {
        s.split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .map(str::to_string)
    };
    assert!(digest(&pushed).is_some(), "push printed a digest: {pushed}");
    assert_eq!(digest(&pushed), digest(&pulled), "{pushed} / {pulled}");

    // Credential helpers: `credHelpers` names a `docker-credential-*` program on PATH, which
    // gets the server on stdin and answers JSON; it takes precedence over `auths`.
    let bin = root.join("helpers");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-tugboattest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n[ \"$server\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"{host}\",\"Username\":\"tugboat\",\"Secret\":\"s3cret-Pass\"}}'\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let helped = config_dir(
        "helped",
        format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}, "credHelpers": {{"{host}": "tugboattest"}}}}"#,
            b64("tugboat:not-the-password")
        ),
    );
    let c = root.join("c");
    let pull_c = [
        "pull",
        r,
        "--image-dir",
        c.to_str().unwrap(),
        "--insecure-registry",
        &host,
    ];
    let (pulled, _) = ok(&pull_c, &[("DOCKER_CONFIG", &helped), ("PATH", &path)]);
    assert_eq!(
        digest(&pushed),
        digest(&pulled),
        "through the helper: {pulled}"
    );
    // A configured helper that is not installed is an error that names it.
    let missing = config_dir(
        "missing",
        r#"{"credsStore": "tugboat-not-installed"}"#.into(),
    );
    let out = tugboat(&pull_c, &[("DOCKER_CONFIG", &missing)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("docker-credential-tugboat-not-installed"),
        "{stderr}"
    );
}
