//! `tugboat build`, `push`, `pull` and `image ls|rm|tag|save|load`: VM images on this host.
//!
//! The commands work on an image store directory: `--image-dir DIR`, else `$TUGBOAT_IMAGE_DIR`,
//! else `$XDG_DATA_HOME/tugboat/images` (`~/.local/share/tugboat/images`). `--data-dir DATA`
//! selects a node's cache, `DATA/images`, which the QEMU runtime of `tugboatd` boots from, so
//! `tugboat image load vm.tar --data-dir /var/lib/tugboat` readies an air-gapped node, and
//! `tugboat image load vm.tar --all-nodes` (or `--node N`) streams the archive through the
//! apiserver into every node's cache.
//! Progress goes to stderr (bars on a terminal, a line per blob otherwise); the manifest digest
//! of a build, push or pull goes to stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use tugboat_qemu::image::{ImageStore, ImageSummary, Progress, PullOptions, PushOptions};

/// Which image store a command uses.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Image store directory (default: $TUGBOAT_IMAGE_DIR, else $XDG_DATA_HOME/tugboat/images,
    /// else ~/.local/share/tugboat/images).
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// A tugboatd data dir: use its node image cache, DATA/images.
    #[arg(long, value_name = "DATA", conflicts_with = "image_dir")]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The store directory these flags (and the environment) select.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.join("images"));
        }
        if let Some(d) = &self.image_dir {
            return Ok(d.clone());
        }
        default_image_dir()
    }

    /// Opens the selected store.
    pub fn open(&self) -> anyhow::Result<ImageStore> {
        let dir = self.dir()?;
        ImageStore::open(&dir).with_context(|| format!("opening the image store {}", dir.display()))
    }
}

/// `$TUGBOAT_IMAGE_DIR`, else `$XDG_DATA_HOME/tugboat/images`, else `~/.local/share/tugboat/images`.
pub fn default_image_dir() -> anyhow::Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("TUGBOAT_IMAGE_DIR") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_DATA_HOME") {
        return Ok(d.join("tugboat").join("images"));
    }
    match var("HOME") {
        Some(h) => Ok(h
            .join(".local")
            .join("share")
            .join("tugboat")
            .join("images")),
        None => bail!("no image store: set --image-dir, TUGBOAT_IMAGE_DIR or HOME"),
    }
}

/// How registries are reached.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Registry host, with its port, to reach over plain HTTP (repeatable; also
    /// $TUGBOAT_INSECURE_REGISTRIES, comma-separated).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Docker config with registry credentials (default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The flags' hosts plus those of `$TUGBOAT_INSECURE_REGISTRIES`.
    pub fn insecure(&self) -> Vec<String> {
        let mut hosts = self.insecure_registries.clone();
        if let Ok(env) = std::env::var("TUGBOAT_INSECURE_REGISTRIES") {
            hosts.extend(
                env.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string),
            );
        }
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// `tugboat build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The Imagefile (default: CONTEXT/Imagefile).
    #[arg(short = 'f', long = "file", value_name = "IMAGEFILE")]
    pub file: Option<PathBuf>,
    /// Reference to tag the image with (e.g. localhost:5000/debian:12).
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub tag: String,
    /// Build context: the directory the Imagefile's files are in.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `tugboat push`.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Local image to push, to the registry its reference names.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `tugboat pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image to pull.
    pub reference: String,
    /// Mirror tried before a registry: REGISTRY=MIRROR (repeatable, tried in order).
    #[arg(long = "registry-mirror", value_name = "REGISTRY=MIRROR")]
    pub mirrors: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `tugboat image …`.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// List images: references, digest, size, created, last used.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove references; an image left without any is deleted (a digest deletes it outright).
    #[command(alias = "remove")]
    Rm {
        /// References or digests.
        #[arg(required = true)]
        references: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Give an image another reference.
    Tag {
        /// Existing reference or digest.
        source: String,
        /// New reference.
        target: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write images to an OCI image layout tar archive (for air-gapped hosts).
    Save {
        /// References to save.
        #[arg(required = true)]
        references: Vec<String>,
        /// Archive to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Load images from an OCI image layout tar archive (no registry needed): into a local
    /// store, or with --node/--all-nodes into nodes' caches through the apiserver.
    Load {
        /// Archive to read.
        archive: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Upload into this node's cache through the apiserver (repeatable).
        #[arg(long = "node", value_name = "NODE", conflicts_with_all = ["image_dir", "data_dir"])]
        nodes: Vec<String>,
        /// Upload into every node's cache through the apiserver.
        #[arg(long, conflicts_with_all = ["nodes", "image_dir", "data_dir"])]
        all_nodes: bool,
        /// kubeconfig for --node/--all-nodes (default: $KUBECONFIG, else ~/.kube/config).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
}

/// Output formats of `image ls`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
}

/// Runs `tugboat build`.
pub async fn build(args: BuildArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Imagefile"));
    let image = store
        .build(&file, &args.context, &args.tag, &Progress::auto())
        .await?;
    println!("{}", image.manifest_digest);
    Ok(())
}

/// Runs `tugboat push`.
pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let opts = PushOptions {
        insecure_registries: args.registry.insecure(),
        docker_config: args.registry.docker_config.clone(),
    };
    let digest = store
        .push(&args.reference, &opts, &Progress::auto())
        .await?;
    println!("{digest}");
    Ok(())
}

/// Runs `tugboat pull`.
pub async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let opts = PullOptions {
        insecure_registries: args.registry.insecure(),
        mirrors: parse_mirrors(&args.mirrors)?,
        docker_config: args.registry.docker_config.clone(),
    };
    let image = store
        .pull(&args.reference, &opts, &Progress::auto())
        .await?;
    println!("{}", image.manifest_digest);
    Ok(())
}

/// `REGISTRY=MIRROR` flags as the map `PullOptions` takes, mirrors in the order given.
pub fn parse_mirrors(flags: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut mirrors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in flags {
        match f.split_once('=') {
            Some((reg, mirror)) if !reg.is_empty() && !mirror.is_empty() => {
                mirrors
                    .entry(reg.to_string())
                    .or_default()
                    .push(mirror.to_string());
            }
            _ => bail!("--registry-mirror {f:?}: expected REGISTRY=MIRROR"),
        }
    }
    Ok(mirrors)
}

/// Runs `tugboat image …`.
pub async fn image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Ls { format, store } => {
            let list = store.open()?.list()?;
            match format {
                ListFormat::Table => print!("{}", render(&list, SystemTime::now())),
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&to_json(&list))?),
            }
        }
        ImageCommand::Rm { references, store } => {
            let store = store.open()?;
            for r in references {
                let removed = store.remove(&r)?;
                for u in removed.untagged {
                    println!("Untagged: {u}");
                }
                if let Some(d) = removed.deleted {
                    println!("Deleted: {d}");
                }
            }
        }
        ImageCommand::Tag {
            source,
            target,
            store,
        } => {
            store.open()?.tag(&source, &target)?;
        }
        ImageCommand::Save {
            references,
            output,
            store,
        } => {
            store
                .open()?
                .save(&references, &output, &Progress::auto())
                .await?;
        }
        ImageCommand::Load {
            archive,
            store,
            nodes,
            all_nodes,
            kubeconfig,
        } => {
            if nodes.is_empty() && !all_nodes {
                let loaded = store.open()?.load(&archive, &Progress::auto()).await?;
                for r in loaded {
                    println!("Loaded: {r}");
                }
            } else {
                load_into_nodes(&archive, nodes, kubeconfig.as_deref()).await?;
            }
        }
    }
    Ok(())
}

/// `image load --node/--all-nodes`: the archive is streamed to each node in turn (the
/// apiserver proxies it to the node's agent); a node that fails does not stop the others.
async fn load_into_nodes(
    archive: &std::path::Path,
    nodes: Vec<String>,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let config = crate::shipctl::kube_config(kubeconfig).await?;
    let client = kube::Client::try_from(config.clone())?;
    let nodes = if nodes.is_empty() {
        let mut all = crate::shipctl::node_names(&client).await?;
        all.sort();
        if all.is_empty() {
            bail!("the cluster has no nodes to load images into");
        }
        all
    } else {
        nodes
    };
    let progress = Progress::auto();
    let mut failed = Vec::new();
    for node in &nodes {
        // A refusal before the upload, not a reset halfway through gigabytes.
        if let Err(e) = crate::shipctl::check_node(&client, node).await {
            eprintln!("{node}: {e}");
            failed.push(node.clone());
            continue;
        }
        let task = progress.task("uploading", node, None);
        match crate::shipctl::upload_images(&config, node, archive, task).await {
            Ok(images) => {
                for r in images {
                    println!("{node}: Loaded: {r}");
                }
            }
            Err(e) => {
                eprintln!("{node}: {e}");
                failed.push(node.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "loading {} failed on {} of {} nodes: {}",
            archive.display(),
            failed.len(),
            nodes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn to_json(list: &[ImageSummary]) -> serde_json::Value {
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    serde_json::Value::Array(
        list.iter()
            .map(|i| {
                serde_json::json!({
                    "references": i.references,
                    "digest": i.digest,
                    "sizeBytes": i.size_bytes,
                    "created": secs(i.created),
                    "lastUsed": secs(i.last_used),
                    "metadata": i.metadata,
                })
            })
            .collect(),
    )
}

/// The `image ls` table: one row per reference (`<none>` for unnamed images).
pub fn render(list: &[ImageSummary], now: SystemTime) -> String {
    let mut rows = vec![[
        "REFERENCE".to_string(),
        "DIGEST".to_string(),
        "SIZE".to_string(),
        "CREATED".to_string(),
        "LAST USED".to_string(),
    ]];
    for i in list {
        let refs = if i.references.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.references.clone()
        };
        for r in refs {
            rows.push([
                r,
                short_digest(&i.digest),
                human_bytes(i.size_bytes),
                ago(now, i.created),
                ago(now, i.last_used),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(now: SystemTime, t: SystemTime) -> String {
    let d = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86_399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_reference() {
        let now = SystemTime::now();
        let list = vec![
            ImageSummary {
                references: vec!["localhost:5000/a:1".into(), "localhost:5000/a:2".into()],
                digest: format!("sha256:{}", "ab".repeat(32)),
                size_bytes: 3 << 20,
                created: now - Duration::from_secs(7200),
                last_used: now - Duration::from_secs(30),
                metadata: None,
            },
            ImageSummary {
                references: vec![],
                digest: format!("sha256:{}", "cd".repeat(32)),
                size_bytes: 100,
                created: now,
                last_used: now,
                metadata: None,
            },
        ];
        let t = render(&list, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("REFERENCE"));
        assert!(
            lines[1].contains("localhost:5000/a:1") && lines[1].contains("sha256:abababababab")
        );
        assert!(
            lines[1].contains("3.0 MiB")
                && lines[1].contains("2h ago")
                && lines[1].contains("30s ago")
        );
        assert!(lines[3].starts_with("<none>") && lines[3].contains("100 B"));
    }

    #[test]
    fn mirrors_and_insecure_hosts() {
        let m = parse_mirrors(&["docker.io=m1:5000".into(), "docker.io=m2".into()]).unwrap();
        assert_eq!(
            m["docker.io"],
            vec!["m1:5000".to_string(), "m2".to_string()]
        );
        assert!(parse_mirrors(&["nomirror".into()]).is_err());
        let dirs = StoreArgs {
            image_dir: None,
            data_dir: Some("/var/lib/tugboat".into()),
        };
        assert_eq!(
            dirs.dir().unwrap(),
            PathBuf::from("/var/lib/tugboat/images")
        );
    }
}
