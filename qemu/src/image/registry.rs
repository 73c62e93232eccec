//! Push to and pull from OCI registries with `oci-client`, streaming blobs from and to disk.
//!
//! Pulls try each mirror of the registry in order, then the registry itself; a blob is written
//! to a temp file while its sha256 is computed, and only a verified blob is renamed into the
//! store (a mismatch leaves nothing behind). Pushes skip blobs the registry has (HEAD) and send
//! the rest as chunked uploads read from the store, so no disk is ever loaded into memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::artifact::{
    Descriptor, ImageMetadata, LayerKind, Manifest, MANIFEST_MEDIA_TYPE, MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
};
use super::auth::{Credentials, DockerConfig};
use super::blobio::sha256_digest;
use super::error::{io_err, ImageError, Result};
use super::progress::{Progress, Task};
use super::reference::{ImageRef, ReferenceError};
use super::store::{ImageStore, LocalImage};

/// How pulls reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registry hosts (`host:port`) reached over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Registry host → mirror hosts tried in order before it.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Docker config with credentials; `None` reads `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` (a missing file means anonymous).
    pub docker_config: Option<PathBuf>,
}

/// How pushes reach registries.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Registry hosts (`host:port`) reached over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Docker config with credentials (see [`PullOptions::docker_config`]).
    pub docker_config: Option<PathBuf>,
}

/// Size of each chunk read from disk and sent as one upload PATCH (oci-client's chunk size).
const PUSH_CHUNK: usize = 4 << 20;

fn load_config(path: &Option<PathBuf>) -> Result<DockerConfig> {
    Ok(match path {
        Some(p) => DockerConfig::load(p)?,
        None => DockerConfig::load_default()?,
    })
}

/// An `oci-client` for these insecure hosts, with the process's rustls provider in place.
fn client(insecure: &[String]) -> Result<Client> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either provider will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let config = ClientConfig {
        protocol: if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure.to_vec())
        },
        // A Tugboat image is one manifest; an index means it is something else.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(300)),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| ImageError::Internal(format!("HTTP client: {e}")))
}

/// Translates an `oci-client` error, naming the registry; unknown manifests become `NotFound`.
fn registry_err(registry: &str, reference: &str, e: OciDistributionError) -> ImageError {
    let status = match &e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::RegistryError { envelope, .. } => {
            let unknown = envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                )
            });
            if unknown {
                return ImageError::NotFound(reference.to_string());
            }
            None
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            return ImageError::NotFound(reference.to_string())
        }
        _ => None,
    };
    if status == Some(404) {
        return ImageError::NotFound(reference.to_string());
    }
    // Include the source chain: reqwest's top-level message hides the cause (refused, TLS, …).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    ImageError::Registry {
        registry: registry.to_string(),
        status,
        message,
    }
}

/// One place to pull from: a mirror or the origin registry.
struct Source {
    host: String,
    oref: oci_client::Reference,
    /// The registry whose credentials this source takes (looked up when it is tried).
    creds_for: String,
}

impl ImageStore {
    /// Returns the image if the store has it (by tag or digest), else pulls it.
    ///
    /// Concurrent calls for one reference pull it once; concurrent pulls sharing a blob download
    /// it once. Progress goes to `tracing` (this is the node agent's path).
    pub async fn ensure(&self, reference: &str, opts: &PullOptions) -> Result<LocalImage> {
        if let Some(image) = self.get(reference)? {
            return Ok(image);
        }
        let r = ImageRef::parse(reference)?;
        let _one_pull = self.lock_digest(&format!("ref:{r}")).await;
        if let Some(image) = self.get(reference)? {
            return Ok(image);
        }
        self.pull(reference, opts, &Progress::silent()).await
    }

    /// Pulls `reference` (always asking the registry what its tag points at now), trying the
    /// registry's mirrors first.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let r = ImageRef::parse(reference)?;
        let config = load_config(&opts.docker_config)?;
        let mut insecure = opts.insecure_registries.clone();
        let mut sources = Vec::new();
        for mirror in opts.mirrors.get(&r.registry).into_iter().flatten() {
            let mut oref = r.to_oci();
            oref.set_mirror_registry(mirror.clone());
            sources.push(Source {
                host: mirror.clone(),
                oref,
                creds_for: mirror.clone(),
            });
        }
        let origin = r.to_oci();
        // docker.io's API lives at index.docker.io; an insecure docker.io is nonsense anyway.
        if insecure.contains(&r.registry) {
            insecure.push(origin.resolve_registry().to_string());
        }
        sources.push(Source {
            host: origin.resolve_registry().to_string(),
            oref: origin,
            creds_for: r.registry.clone(),
        });
        let client = client(&insecure)?;
        let mut last_err = None;
        let count = sources.len();
        for (i, source) in sources.into_iter().enumerate() {
            // A source whose credential helper fails is a failed source, not a failed pull.
            let tried = match config.credentials_for(&source.creds_for).await {
                Ok(creds) => {
                    self.pull_from(&client, &source, &creds.to_oci(), &r, progress)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            match tried {
                Ok(image) => return Ok(image),
                Err(e) => {
                    if i + 1 < count {
                        tracing::info!(mirror = %source.host, error = %e, "mirror failed; trying the next source");
                        progress.message(&format!("{}: {e}; trying the next source", source.host));
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ImageError::NotFound(r.to_string())))
    }

    async fn pull_from(
        &self,
        client: &Client,
        source: &Source,
        auth: &RegistryAuth,
        r: &ImageRef,
        progress: &Progress,
    ) -> Result<LocalImage> {
        let shown = r.to_string();
        let rerr = |e| registry_err(&source.host, &shown, e);
        let (bytes, _) = client
            .pull_manifest_raw(&source.oref, auth, &[MANIFEST_MEDIA_TYPE])
            .await
            .map_err(rerr)?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ImageError::InvalidImage {
                reference: shown,
                message: format!("manifest of {} bytes is too large", bytes.len()),
            });
        }
        // Our own hash is the one that counts (oci-client checks the header, we check content).
        let digest = sha256_digest(&bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {shown}"),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        let manifest = Manifest::parse(&bytes, &shown)?;
        let _pins = self.pin(manifest.blob_digests().chain([digest.as_str()]));

        if self.local_image(&digest, &shown)?.is_none() {
            // The config first: a broken image fails before gigabytes are downloaded.
            let cfg = &manifest.config;
            if !self.has_blob(&cfg.digest) {
                if cfg.size > MAX_CONFIG_BYTES {
                    return Err(ImageError::InvalidImage {
                        reference: shown,
                        message: format!("config of {} bytes is too large", cfg.size),
                    });
                }
                let mut buf = Vec::new();
                client
                    .pull_blob(&source.oref, cfg.digest.as_str(), &mut buf)
                    .await
                    .map_err(rerr)?;
                let actual = sha256_digest(&buf);
                if actual != cfg.digest {
                    return Err(ImageError::DigestMismatch {
                        what: "config".into(),
                        expected: cfg.digest.clone(),
                        actual,
                    });
                }
                ImageMetadata::parse(&buf, &manifest, &shown)?;
                self.write_blob(&buf)?;
            }
            let shown = &shown;
            let fetches = manifest.layers.iter().map(|layer| async move {
                let kind = LayerKind::from_media_type(&layer.media_type).ok_or_else(|| {
                    ImageError::InvalidImage {
                        reference: shown.clone(),
                        message: format!("unknown layer media type {}", layer.media_type),
                    }
                })?;
                self.fetch_blob(client, source, layer, progress).await?;
                self.extract_layer(&layer.digest, kind, layer.title(), progress)
                    .await
            });
            futures::future::try_join_all(fetches).await?;
            self.write_blob(&bytes)?;
        }
        let image = self.commit_image(&digest, Some(r), false)?;
        progress.message(&format!("pulled {shown} {digest}"));
        Ok(image)
    }

    /// Downloads one blob into the store unless it is there, verifying digest and size.
    async fn fetch_blob(
        &self,
        client: &Client,
        source: &Source,
        desc: &Descriptor,
        progress: &Progress,
    ) -> Result<()> {
        let _guard = self.lock_digest(&desc.digest).await;
        let task = progress.task("pulling", desc.title(), Some(desc.size));
        if self.has_blob(&desc.digest) {
            task.finish("(already present)");
            return Ok(());
        }
        let rerr = |e| registry_err(&source.host, desc.title(), e);
        let mut stream = client
            .pull_blob_stream(&source.oref, desc.digest.as_str())
            .await
            .map_err(rerr)?;
        let tmp = self.temp(desc.title());
        let mut file = tokio::fs::File::create(tmp.path())
            .await
            .map_err(io_err("creating", tmp.path()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                // oci-client verifies as it streams and reports a mismatch as an I/O error.
                if let Some(oci_client::errors::DigestError::VerificationError {
                    expected,
                    actual,
                }) = e.get_ref().and_then(|r| r.downcast_ref())
                {
                    return ImageError::DigestMismatch {
                        what: desc.title().to_string(),
                        expected: expected.clone(),
                        actual: actual.clone(),
                    };
                }
                ImageError::Registry {
                    registry: source.host.clone(),
                    status: None,
                    message: format!("reading {}: {e}", desc.title()),
                }
            })?;
            size += chunk.len() as u64;
            if size > desc.size {
                return Err(ImageError::SizeMismatch {
                    what: desc.title().to_string(),
                    expected: desc.size,
                    actual: size,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_err("writing", tmp.path()))?;
            task.inc(chunk.len() as u64);
        }
        file.sync_all()
            .await
            .map_err(io_err("syncing", tmp.path()))?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        self.commit_blob(
            tmp,
            desc.title(),
            &desc.digest,
            Some(desc.size),
            &actual,
            size,
        )?;
        task.finish("");
        Ok(())
    }

    /// Pushes the local image `reference` to the registry it names; returns the manifest digest.
    pub async fn push(
        &self,
        reference: &str,
        opts: &PushOptions,
        progress: &Progress,
    ) -> Result<String> {
        let r = ImageRef::parse(reference)?;
        if r.digest.is_some() {
            return Err(ImageError::Reference(ReferenceError {
                reference: reference.to_string(),
                reason: "push a tag, not a digest".into(),
            }));
        }
        let shown = r.to_string();
        let index = self.read_index()?;
        let digest = self.resolve(&index, &shown)?;
        let manifest_bytes = self.read_blob(&digest, MAX_MANIFEST_BYTES)?;
        let manifest = Manifest::parse(&manifest_bytes, &shown)?;
        let _pins = self.pin(manifest.blob_digests().chain([digest.as_str()]));
        for d in manifest.blob_digests() {
            if !self.has_blob(d) {
                return Err(ImageError::InvalidImage {
                    reference: shown,
                    message: format!("blob {d} is missing from the store"),
                });
            }
        }
        let config = load_config(&opts.docker_config)?;
        let creds: Credentials = config.credentials_for(&r.registry).await?;
        let auth = creds.to_oci();
        let oref = r.to_oci();
        let host = oref.resolve_registry().to_string();
        let mut insecure = opts.insecure_registries.clone();
        if insecure.contains(&r.registry) {
            insecure.push(host.clone());
        }
        let client = client(&insecure)?;
        let rerr = |e| registry_err(&host, &shown, e);
        client
            .auth(&oref, &auth, RegistryOperation::Push)
            .await
            .map_err(rerr)?;

        let blobs: Vec<&Descriptor> = manifest.layers.iter().chain([&manifest.config]).collect();
        let pushes = blobs.into_iter().map(|desc| {
            let (client, oref, host) = (&client, &oref, &host);
            async move {
                let task = progress.task("pushing", desc.title(), Some(desc.size));
                let rerr = |e| registry_err(host, desc.title(), e);
                if client.blob_exists(oref, &desc.digest).await.map_err(rerr)? {
                    task.finish("(already in the registry)");
                    return Ok::<_, ImageError>(());
                }
                let path = self.blob_path(&desc.digest);
                let stream = file_stream(path, task.clone()).await?;
                client
                    .push_blob_stream(oref, stream, &desc.digest, Some(desc.size))
                    .await
                    .map_err(rerr)?;
                task.finish("");
                Ok(())
            }
        });
        // A few at a time: the disk is the long pole, the small blobs ride along.
        futures::stream::iter(pushes)
            .buffer_unordered(3)
            .try_collect::<Vec<()>>()
            .await?;
        let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        client
            .push_manifest_raw(&oref, manifest_bytes, content_type)
            .await
            .map_err(rerr)?;
        progress.message(&format!("pushed {shown} {digest}"));
        Ok(digest)
    }
}

/// The file as a stream of [`PUSH_CHUNK`]-sized pieces (each becomes one upload PATCH).
async fn file_stream(
    path: PathBuf,
    task: Task,
) -> Result<
    impl futures::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
        + Send
        + 'static,
> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(io_err("opening", &path))?;
    Ok(futures::stream::try_unfold(
        (file, task, false),
        |(mut file, task, done)| async move {
            if done {
                return Ok(None);
            }
            let mut buf = bytes::BytesMut::with_capacity(PUSH_CHUNK);
            while buf.len() < PUSH_CHUNK {
                let n = file.read_buf(&mut buf).await?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            let full = buf.len() == PUSH_CHUNK;
            task.inc(buf.len() as u64);
            Ok(Some((buf.freeze(), (file, task, !full))))
        },
    ))
}
