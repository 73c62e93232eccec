//! Store-level tests: build, save → load, remove, gc and digest checks, all in temp dirs.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::artifact::{BootMode, Manifest, DISK_RAW_MEDIA_TYPE, KERNEL_MEDIA_TYPE};
use super::blobio::{hash_file, sha256_digest};
use super::disk::QCOW2_MAGIC;
use super::*;

/// A small fake qcow2 (valid header, no backing file) with some data after it.
fn fake_qcow2(len: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(QCOW2_MAGIC);
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(&16u32.to_be_bytes());
    h.extend_from_slice(&(64u64 << 20).to_be_bytes());
    h.resize(len, 0);
    for (i, b) in h.iter_mut().enumerate().skip(4096).step_by(7) {
        *b = (i % 253) as u8;
    }
    h
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ctx: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ctx = root.join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("disk.qcow2"), fake_qcow2(300_000)).unwrap();
        std::fs::write(ctx.join("vmlinuz"), b"not really a kernel").unwrap();
        std::fs::write(ctx.join("initrd.img"), b"not really an initrd").unwrap();
        std::fs::write(
            ctx.join("Imagefile"),
            "FROM disk.qcow2\nKERNEL vmlinuz\nINITRD initrd.img\nCMDLINE console=ttyS0 \\\n  quiet\nLABEL os=test\n",
        )
        .unwrap();
        Fixture {
            _dir: dir,
            root,
            ctx,
        }
    }

    fn store(&self, name: &str) -> ImageStore {
        ImageStore::open(&self.root.join(name)).unwrap()
    }

    async fn build(&self, store: &ImageStore, tag: &str) -> LocalImage {
        store
            .build(
                &self.ctx.join("Imagefile"),
                &self.ctx,
                tag,
                &Progress::silent(),
            )
            .await
            .unwrap()
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn build_gives_a_bootable_local_image() {
    let f = Fixture::new();
    let store = f.store("a");
    let img = f.build(&store, "localhost:5000/test/img:v1").await;
    assert_eq!(img.reference, "localhost:5000/test/img:v1");
    assert_eq!(img.disk_format, Some(DiskFormat::Qcow2));
    assert_eq!(
        std::fs::read(img.disk.as_ref().unwrap()).unwrap(),
        std::fs::read(f.ctx.join("disk.qcow2")).unwrap()
    );
    assert_eq!(
        std::fs::read(img.kernel.as_ref().unwrap()).unwrap(),
        b"not really a kernel"
    );
    assert_eq!(
        std::fs::read(img.initrd.as_ref().unwrap()).unwrap(),
        b"not really an initrd"
    );
    assert_eq!(img.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    assert_eq!(img.metadata.boot_mode, BootMode::Direct);
    assert_eq!(img.metadata.disk_size, Some(64 << 20));
    assert_eq!(
        img.metadata.labels.get("os").map(String::as_str),
        Some("test")
    );
    assert!(img.size_bytes > 0);
    // Base files are read-only: every Ship shares them.
    let mode = std::fs::metadata(img.disk.as_ref().unwrap())
        .unwrap()
        .permissions();
    assert!(mode.readonly());
    // get() by tag and by digest; list() shows it.
    assert_eq!(
        store.get("localhost:5000/test/img:v1").unwrap().unwrap(),
        img
    );
    let pinned = format!("localhost:5000/test/img@{}", img.manifest_digest);
    assert_eq!(
        store.get(&pinned).unwrap().unwrap().manifest_digest,
        img.manifest_digest
    );
    assert!(store.get("localhost:5000/test/img:v2").unwrap().is_none());
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].references,
        vec!["localhost:5000/test/img:v1".to_string()]
    );
    assert!(list[0].names().contains(&pinned));
    // Building the same inputs again gives the same digest (nothing time-dependent).
    let again = f.build(&store, "localhost:5000/test/img:v2").await;
    assert_eq!(again.manifest_digest, img.manifest_digest);
    // ensure() of a present image needs no network.
    let ensured = store
        .ensure("localhost:5000/test/img:v1", &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(ensured.manifest_digest, img.manifest_digest);
    // The stored manifest is what the artifact module describes.
    let manifest = Manifest::parse(
        &std::fs::read(store.blob_path(&img.manifest_digest)).unwrap(),
        "x",
    )
    .unwrap();
    assert_eq!(manifest.layers.len(), 3);
    for l in &manifest.layers {
        assert_eq!(
            hash_file(&store.blob_path(&l.digest)).unwrap(),
            (l.digest.clone(), l.size)
        );
    }
}

#[tokio::test]
async fn raw_and_scratch_images() {
    let f = Fixture::new();
    std::fs::write(f.ctx.join("disk.raw"), vec![7u8; 10_000]).unwrap();
    std::fs::write(f.ctx.join("Raw.Imagefile"), "FROM disk.raw\nARCH arm64\n").unwrap();
    std::fs::write(
        f.ctx.join("Scratch.Imagefile"),
        "FROM scratch\nKERNEL vmlinuz\n",
    )
    .unwrap();
    let store = f.store("a");
    let p = Progress::silent();
    let raw = store
        .build(&f.ctx.join("Raw.Imagefile"), &f.ctx, "raw", &p)
        .await
        .unwrap();
    assert_eq!(raw.reference, "docker.io/library/raw:latest");
    assert_eq!(raw.disk_format, Some(DiskFormat::Raw));
    assert_eq!(raw.metadata.arch, Arch::Aarch64);
    assert_eq!(raw.metadata.boot_mode, BootMode::Disk);
    assert_eq!(raw.kernel, None);
    let m = Manifest::parse(
        &std::fs::read(store.blob_path(&raw.manifest_digest)).unwrap(),
        "x",
    )
    .unwrap();
    assert_eq!(m.layers[0].media_type, DISK_RAW_MEDIA_TYPE);
    let scratch = store
        .build(&f.ctx.join("Scratch.Imagefile"), &f.ctx, "scratch:1", &p)
        .await
        .unwrap();
    assert_eq!(scratch.disk, None);
    assert_eq!(scratch.metadata.format, None);
    let m = Manifest::parse(
        &std::fs::read(store.blob_path(&scratch.manifest_digest)).unwrap(),
        "x",
    )
    .unwrap();
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.layers[0].media_type, KERNEL_MEDIA_TYPE);
    // Imagefile errors come out with their line.
    std::fs::write(f.ctx.join("Bad"), "FROM disk.raw\nRUN x\n").unwrap();
    let e = store
        .build(&f.ctx.join("Bad"), &f.ctx, "bad", &p)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "Bad:2: unknown instruction RUN (expected one of FROM, FORMAT, ARCH, KERNEL, INITRD, CMDLINE, LABEL)");
}

#[tokio::test]
async fn save_then_load_round_trips_without_network() {
    let f = Fixture::new();
    let a = f.store("a");
    let img = f.build(&a, "localhost:5000/test/img:v1").await;
    a.tag("localhost:5000/test/img:v1", "example.org/other:2")
        .unwrap();
    let tar = f.root.join("images.tar");
    a.save(
        &[
            "localhost:5000/test/img:v1".into(),
            "example.org/other:2".into(),
        ],
        &tar,
        &Progress::silent(),
    )
    .await
    .unwrap();

    // The archive is an OCI layout with the full references.
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    let mut names = Vec::new();
    let mut index = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "index.json" {
            e.read_to_string(&mut index).unwrap();
        }
        names.push(name);
    }
    assert_eq!(names[0], "oci-layout");
    assert!(names.contains(&format!("blobs/sha256/{}", &img.manifest_digest[7..])));
    // Manifest, config and three layers, each once.
    assert_eq!(names.iter().filter(|n| n.starts_with("blobs/")).count(), 5);
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "localhost:5000/test/img:v1"
    );
    assert_eq!(
        index["manifests"][1]["digest"],
        img.manifest_digest.as_str()
    );

    let b = f.store("b");
    let loaded = b.load(&tar, &Progress::silent()).await.unwrap();
    assert_eq!(
        loaded,
        vec![
            "localhost:5000/test/img:v1".to_string(),
            "example.org/other:2".to_string()
        ]
    );
    let got = b.get("localhost:5000/test/img:v1").unwrap().unwrap();
    assert_eq!(got.manifest_digest, img.manifest_digest);
    assert_eq!(
        std::fs::read(got.disk.unwrap()).unwrap(),
        std::fs::read(img.disk.unwrap()).unwrap()
    );
    assert_eq!(got.metadata, img.metadata);
    assert!(b.get("example.org/other:2").unwrap().is_some());
    // Loading again is idempotent.
    b.load(&tar, &Progress::silent()).await.unwrap();
    assert_eq!(b.list().unwrap().len(), 1);
    // Loaded images cannot be pulled again: age-based GC keeps them, `rm` still removes them.
    let report = b.gc(&HashSet::new(), Duration::ZERO).unwrap();
    assert!(report.images_removed.is_empty(), "{report:?}");
    assert!(b.get("localhost:5000/test/img:v1").unwrap().is_some());
    b.remove("localhost:5000/test/img:v1").unwrap();
    b.remove("example.org/other:2").unwrap();
    assert!(b.list().unwrap().is_empty());
}

#[tokio::test]
async fn tampered_archive_is_refused_and_leaves_nothing() {
    let f = Fixture::new();
    let a = f.store("a");
    let img = f.build(&a, "t:1").await;
    let kernel_digest = hash_file(img.kernel.as_ref().unwrap()).unwrap().0;
    let tar = f.root.join("t.tar");
    a.save(&["t:1".into()], &tar, &Progress::silent())
        .await
        .unwrap();
    // Flip the kernel's bytes inside the archive (same length, so the tar stays well-formed).
    let mut bytes = std::fs::read(&tar).unwrap();
    let needle = b"not really a kernel";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at] = b'N';
    std::fs::write(&tar, &bytes).unwrap();
    let b = f.store("b");
    let e = b.load(&tar, &Progress::silent()).await.unwrap_err();
    match &e {
        ImageError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, kernel_digest);
            assert_ne!(actual, expected);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(!b.has_blob(&kernel_digest));
    assert_eq!(files_in(&b.dir().join("tmp")), 0, "no temp file left");
    assert!(b.list().unwrap().is_empty());
}

#[tokio::test]
async fn archives_that_are_not_layouts_are_refused() {
    let f = Fixture::new();
    let b = f.store("b");
    let tar = f.root.join("x.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o644);
    builder
        .append_data(&mut h, "index.json", &b"{}"[..])
        .unwrap();
    builder.finish().unwrap();
    drop(builder);
    let e = b.load(&tar, &Progress::silent()).await.unwrap_err();
    assert!(e.to_string().contains("oci-layout"), "{e}");
}

#[tokio::test]
async fn remove_untags_then_deletes_unshared_blobs() {
    let f = Fixture::new();
    let s = f.store("a");
    let img = f.build(&s, "a:1").await;
    s.tag("a:1", "a:2").unwrap();
    let r = s.remove("a:1").unwrap();
    assert_eq!(r.untagged, vec!["docker.io/library/a:1".to_string()]);
    assert_eq!(r.deleted, None);
    assert!(s.get("a:2").unwrap().is_some());
    let r = s.remove("a:2").unwrap();
    assert_eq!(r.deleted.as_deref(), Some(img.manifest_digest.as_str()));
    assert!(r.bytes_freed > 0);
    assert_eq!(files_in(&s.dir().join("blobs/sha256")), 0);
    assert_eq!(files_in(&s.dir().join("files/sha256")), 0);
    assert!(matches!(s.remove("a:2"), Err(ImageError::NotFound(_))));
}

#[tokio::test]
async fn gc_spares_images_in_use_and_shared_blobs() {
    let f = Fixture::new();
    let s = f.store("a");
    let one = f.build(&s, "one:1").await;
    // A second image sharing the disk and kernel, differing in its config.
    std::fs::write(
        f.ctx.join("Two"),
        "FROM disk.qcow2\nKERNEL vmlinuz\nLABEL n=2\n",
    )
    .unwrap();
    let two = s
        .build(&f.ctx.join("Two"), &f.ctx, "two:1", &Progress::silent())
        .await
        .unwrap();
    assert_ne!(one.manifest_digest, two.manifest_digest);

    // Nothing is old enough yet.
    let report = s.gc(&HashSet::new(), Duration::from_secs(3600)).unwrap();
    assert!(report.images_removed.is_empty());
    assert_eq!(s.list().unwrap().len(), 2);

    // "one" is in use: only "two" goes, and the shared disk stays.
    let keep: HashSet<String> = [one.manifest_digest.clone()].into_iter().collect();
    let report = s.gc(&keep, Duration::ZERO).unwrap();
    assert_eq!(report.images_removed, vec![two.manifest_digest.clone()]);
    // Its manifest and config go; the disk and kernel are shared with "one".
    assert_eq!(report.blobs_removed, 2);
    let still = s.get("one:1").unwrap().unwrap();
    assert!(still.disk.unwrap().is_file());
    assert!(s.get("two:1").unwrap().is_none());

    // Touching records use; once nothing is kept, everything goes.
    s.touch(&one.manifest_digest).unwrap();
    s.touch("one:1").unwrap();
    let report = s.gc(&HashSet::new(), Duration::ZERO).unwrap();
    assert_eq!(report.images_removed, vec![one.manifest_digest.clone()]);
    assert_eq!(files_in(&s.dir().join("blobs/sha256")), 0);
    assert_eq!(files_in(&s.dir().join("files/sha256")), 0);
}

#[tokio::test]
async fn store_refuses_blobs_that_do_not_match_their_digest() {
    let f = Fixture::new();
    let s = f.store("a");
    let tmp = s.temp("x");
    std::fs::write(tmp.path(), b"hello").unwrap();
    let tmp_path = tmp.path().to_path_buf();
    let wrong = sha256_digest(b"goodbye");
    let actual = sha256_digest(b"hello");
    let e = s
        .commit_blob(tmp, "x", &wrong, Some(5), &actual, 5)
        .unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(!tmp_path.exists());
    assert!(!s.has_blob(&wrong) && !s.has_blob(&actual));
    // A stored blob whose bytes rotted is caught when read.
    let d = s.write_blob(b"{}").unwrap();
    let p = s.blob_path(&d);
    let mut perms = std::fs::metadata(&p).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&p, perms).unwrap();
    std::fs::write(&p, b"[]").unwrap();
    assert!(matches!(
        s.read_blob(&d, 100),
        Err(ImageError::DigestMismatch { .. })
    ));
}

#[tokio::test]
async fn unknown_references_are_not_found() {
    let f = Fixture::new();
    let s = f.store("a");
    assert!(s.get("nothing:here").unwrap().is_none());
    assert!(matches!(
        s.push("nothing:here", &PushOptions::default(), &Progress::silent())
            .await,
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        s.save(
            &["nothing:here".into()],
            &f.root.join("o.tar"),
            &Progress::silent()
        )
        .await,
        Err(ImageError::NotFound(_))
    ));
    assert!(!f.root.join("o.tar").exists());
    assert!(matches!(s.get("Bad Ref"), Err(ImageError::Reference(_))));
}

/// A minimal OCI registry over plain HTTP serving blobs from a store, for pull tests.
mod fake_registry {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Served content and a count of blob GETs.
    #[derive(Default)]
    pub struct Content {
        pub manifests: HashMap<String, Vec<u8>>,
        pub blobs: HashMap<String, Vec<u8>>,
        pub blob_gets: Mutex<HashMap<String, usize>>,
    }

    /// Serves `content` on a loopback port until the runtime ends; returns `host:port`.
    pub async fn serve(content: Arc<Content>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let content = content.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let mut first = text.lines().next().unwrap_or("").split_whitespace();
                    let method = first.next().unwrap_or("").to_string();
                    let path = first
                        .next()
                        .unwrap_or("")
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let (status, ctype, body, digest) = route(&content, &path);
                    let mut head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\nConnection: close\r\n",
                        body.len()
                    );
                    if let Some(d) = digest {
                        head.push_str(&format!("Docker-Content-Digest: {d}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = sock.write_all(head.as_bytes()).await;
                    if method != "HEAD" {
                        let _ = sock.write_all(&body).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        addr.to_string()
    }

    fn route(c: &Content, path: &str) -> (&'static str, &'static str, Vec<u8>, Option<String>) {
        let not_found = (
            "404 Not Found",
            "application/json",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
            None,
        );
        if path == "/v2/" {
            return ("200 OK", "application/json", b"{}".to_vec(), None);
        }
        if let Some((_, tag)) = path.split_once("/manifests/") {
            return match c.manifests.get(tag) {
                Some(m) => (
                    "200 OK",
                    super::super::artifact::MANIFEST_MEDIA_TYPE,
                    m.clone(),
                    Some(super::super::blobio::sha256_digest(m)),
                ),
                None => not_found,
            };
        }
        if let Some((_, digest)) = path.split_once("/blobs/") {
            *c.blob_gets
                .lock()
                .unwrap()
                .entry(digest.to_string())
                .or_insert(0) += 1;
            return match c.blobs.get(digest) {
                Some(b) => ("200 OK", "application/octet-stream", b.clone(), None),
                None => not_found,
            };
        }
        not_found
    }
}

/// Serves the image `img` of `store` under tag `v1`, with `corrupt` blobs' bytes flipped.
fn content_of(store: &ImageStore, img: &LocalImage, corrupt: &[String]) -> fake_registry::Content {
    let manifest_bytes = std::fs::read(store.blob_path(&img.manifest_digest)).unwrap();
    let manifest = Manifest::parse(&manifest_bytes, "x").unwrap();
    let mut c = fake_registry::Content::default();
    for d in manifest.blob_digests() {
        let mut bytes = std::fs::read(store.blob_path(d)).unwrap();
        if corrupt.iter().any(|x| x == d) {
            bytes[0] ^= 0xff;
        }
        c.blobs.insert(d.to_string(), bytes);
    }
    c.manifests.insert("v1".into(), manifest_bytes);
    c
}

#[tokio::test]
async fn pull_verifies_blobs_and_leaves_nothing_on_mismatch() {
    let f = Fixture::new();
    let a = f.store("a");
    let img = f.build(&a, "built:1").await;
    let kernel = hash_file(img.kernel.as_ref().unwrap()).unwrap().0;
    let host = fake_registry::serve(std::sync::Arc::new(content_of(
        &a,
        &img,
        std::slice::from_ref(&kernel),
    )))
    .await;
    let b = f.store("b");
    let opts = PullOptions {
        insecure_registries: vec![host.clone()],
        ..PullOptions::default()
    };
    let e = b
        .pull(&format!("{host}/test/vm:v1"), &opts, &Progress::silent())
        .await
        .unwrap_err();
    match &e {
        ImageError::DigestMismatch { expected, .. } => assert_eq!(*expected, kernel),
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(!b.has_blob(&kernel));
    assert_eq!(files_in(&b.dir().join("tmp")), 0, "no temp file left");
    assert!(b.list().unwrap().is_empty());
    assert!(b.get(&format!("{host}/test/vm:v1")).unwrap().is_none());
}

#[tokio::test]
async fn ensure_pulls_once_tries_mirrors_first_and_reports_missing_tags() {
    let f = Fixture::new();
    let a = f.store("a");
    let img = f.build(&a, "built:1").await;
    let content = std::sync::Arc::new(content_of(&a, &img, &[]));
    let origin = fake_registry::serve(content.clone()).await;
    // A mirror that refuses connections: the pull falls back to the origin.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let b = f.store("b");
    let opts = PullOptions {
        insecure_registries: vec![origin.clone(), dead.clone()],
        mirrors: [(origin.clone(), vec![dead])].into_iter().collect(),
        ..PullOptions::default()
    };
    let reference = format!("{origin}/test/vm:v1");
    let (x, y) = tokio::join!(b.ensure(&reference, &opts), b.ensure(&reference, &opts));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.manifest_digest, img.manifest_digest);
    assert_eq!(y.manifest_digest, img.manifest_digest);
    for (digest, n) in content.blob_gets.lock().unwrap().iter() {
        assert_eq!(*n, 1, "blob {digest} downloaded {n} times");
    }
    assert_eq!(
        std::fs::read(x.disk.as_ref().unwrap()).unwrap(),
        std::fs::read(f.ctx.join("disk.qcow2")).unwrap()
    );
    assert_eq!(x.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    // Present now: no request at all.
    let before: usize = content.blob_gets.lock().unwrap().values().sum();
    b.ensure(&reference, &opts).await.unwrap();
    let by_digest = format!("{origin}/test/vm@{}", img.manifest_digest);
    b.ensure(&by_digest, &opts).await.unwrap();
    assert_eq!(
        content.blob_gets.lock().unwrap().values().sum::<usize>(),
        before
    );
    // An unknown tag is NotFound.
    let e = b
        .pull(
            &format!("{origin}/test/vm:nope"),
            &opts,
            &Progress::silent(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");
}
