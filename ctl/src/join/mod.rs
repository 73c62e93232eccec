//! `tugboatd join <peer> --token TOKEN`: how a host becomes part of a
//! cluster. The joiner pins the cluster CA by the token's fingerprint
//! (`pin`), sends a CSR and the token to `Join` (the member side is
//! `server`), stores the certificate it gets, starts as a raft learner (or a
//! worker) and asks to be admitted with its new certificate. `DATA/join.json`
//! remembers an unfinished admission so a restart completes it.

pub mod pin;
pub mod server;

/// Generated code of `proto/join.proto`.
pub mod pb {
    tonic::include_proto!("tugboat.join");
}

use anyhow::{bail, Context};
use pb::join_client::JoinClient;
use pb::{AdmitRequest, JoinRequest};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use tugboat_consensus::join_token::JoinToken;
use tugboat_pki::{NodeIdentity, PkiPaths};

/// File in the data dir that records a join.
pub const JOIN_STATE_FILE: &str = "join.json";
/// How long a joiner keeps retrying admission while the cluster is busy or electing.
const ADMIT_PATIENCE: Duration = Duration::from_secs(120);

/// What a joined node remembers about its join.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JoinState {
    /// Id assigned by the cluster.
    pub member_id: u64,
    /// The cluster joined.
    pub cluster_id: u64,
    /// `member` or `worker`.
    pub role: String,
    /// Peer addresses (`host:port`) of members, for admission and (workers) for clients.
    pub peers: Vec<String>,
    /// Client URLs of members (workers reach the store through them).
    pub client_urls: Vec<String>,
    /// True once the cluster admitted this node.
    pub admitted: bool,
}

/// Reads `DATA/join.json` if this data dir was prepared by a join.
pub fn read_state(data_dir: &Path) -> anyhow::Result<Option<JoinState>> {
    let path = data_dir.join(JOIN_STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `DATA/join.json` durably (temp file, fsync, rename).
pub fn write_state(data_dir: &Path, state: &JoinState) -> anyhow::Result<()> {
    use std::io::Write;
    let path = data_dir.join(JOIN_STATE_FILE);
    let tmp = data_dir.join(format!("{JOIN_STATE_FILE}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn strip_scheme(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Writes a private file (0600) durably.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A TLS channel to `peer` (`host:port`) verified against `ca_pem`, presenting `identity`.
async fn peer_channel(
    peer: &str,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> anyhow::Result<Channel> {
    let url = format!("https://{peer}");
    crate::local::tls_channel(
        &url,
        ca_pem,
        identity,
        Duration::from_secs(5),
        Some(Duration::from_secs(60)),
    )
    .await
}

/// Exchanges the token for a certificate with the first reachable peer, and stores the
/// certificate (and, for store members, the CA key) under `data_dir/pki`.
pub async fn exchange_token(
    data_dir: &Path,
    first_peer: &str,
    token_text: &str,
    identity: &NodeIdentity,
) -> anyhow::Result<JoinState> {
    let token = JoinToken::parse(token_text).context("reading --token")?;
    let mut peers: Vec<String> = vec![first_peer.to_string()];
    for p in &token.peers {
        if !peers.contains(p) {
            peers.push(p.clone());
        }
    }
    let csr = tugboat_pki::generate_node_csr(identity).context("creating a key and CSR")?;
    let mut unreachable = Vec::new();
    for peer in &peers {
        let ca_pem = match pin::fetch_pinned_ca(peer, &token.ca_fingerprint).await {
            Ok(ca) => ca,
            Err(e @ pin::PinError::Mismatch { .. }) => return Err(e.into()),
            Err(e) => {
                unreachable.push(format!("{peer}: {e}"));
                continue;
            }
        };
        let channel = match peer_channel(peer, ca_pem.as_bytes(), None).await {
            Ok(c) => c,
            Err(e) => {
                unreachable.push(format!("{peer}: {e:#}"));
                continue;
            }
        };
        let request = JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            name: identity.name.clone(),
            csr_pem: csr.csr_pem.clone(),
            ip_addrs: identity.ip_addrs.iter().map(|ip| ip.to_string()).collect(),
            dns_names: identity.dns_names.clone(),
        };
        let resp = match JoinClient::new(channel).join(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                unreachable.push(format!("{peer}: {}", s.message()));
                continue;
            }
            Err(s) => bail!("{peer} refused the join: {}", s.message()),
        };
        if resp.ca_pem.trim() != ca_pem.trim()
            && tugboat_pki::cert_fingerprint(resp.ca_pem.as_bytes())? != token.ca_fingerprint
        {
            bail!("{peer} answered with a CA that does not match the join token");
        }
        let paths = PkiPaths::new(data_dir);
        std::fs::create_dir_all(&paths.dir)
            .with_context(|| format!("creating {}", paths.dir.display()))?;
        write_private(&paths.ca_cert, &ca_pem)?;
        write_private(&paths.peer_cert, &resp.cert_pem)?;
        write_private(&paths.peer_key, &csr.key_pem)?;
        if resp.role == server::ROLE_MEMBER {
            if resp.ca_key_pem.is_empty() {
                bail!("{peer} made this node a store member but sent no CA key");
            }
            write_private(&paths.ca_key, &resp.ca_key_pem)?;
        } else {
            // A worker serves nothing but uses the same certificate as client and server.
            write_private(&paths.server_cert, &resp.cert_pem)?;
            write_private(&paths.server_key, &csr.key_pem)?;
        }
        let mut member_peers: Vec<String> = resp
            .members
            .iter()
            .map(|m| strip_scheme(&m.peer_url))
            .collect();
        for p in &peers {
            if !member_peers.contains(p) {
                member_peers.push(p.clone());
            }
        }
        let state = JoinState {
            member_id: resp.member_id,
            cluster_id: resp.cluster_id,
            role: resp.role,
            peers: member_peers,
            client_urls: resp
                .members
                .iter()
                .flat_map(|m| m.client_urls.iter().cloned())
                .collect(),
            admitted: false,
        };
        write_state(data_dir, &state)?;
        tracing::info!(
            %peer,
            role = %state.role,
            member = %format!("{:x}", state.member_id),
            cluster = %format!("{:x}", state.cluster_id),
            "join token accepted; certificate stored"
        );
        return Ok(state);
    }
    bail!(
        "no member could be reached to join through:\n  {}",
        unreachable.join("\n  ")
    )
}

/// Asks the cluster to admit this node, retrying while it is busy; marks the join admitted.
pub async fn admit(
    data_dir: &Path,
    name: &str,
    peer_url: Option<String>,
    client_urls: Vec<String>,
) -> anyhow::Result<()> {
    let Some(mut state) = read_state(data_dir)? else {
        bail!("{} is missing; run `tugboatd join` again", JOIN_STATE_FILE);
    };
    if state.admitted {
        return Ok(());
    }
    let paths = PkiPaths::new(data_dir);
    let ca = std::fs::read(&paths.ca_cert).context("reading the CA certificate")?;
    let cert = std::fs::read(&paths.peer_cert).context("reading the peer certificate")?;
    let key = std::fs::read(&paths.peer_key).context("reading the peer key")?;
    let request = AdmitRequest {
        member_id: state.member_id,
        name: name.to_string(),
        peer_url: peer_url.unwrap_or_default(),
        client_urls,
    };
    let deadline = tokio::time::Instant::now() + ADMIT_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        let mut last = String::new();
        for peer in &state.peers {
            let channel = match peer_channel(peer, &ca, Some((&cert, &key))).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{peer}: {e:#}");
                    continue;
                }
            };
            match JoinClient::new(channel).admit(request.clone()).await {
                Ok(_) => {
                    state.admitted = true;
                    write_state(data_dir, &state)?;
                    tracing::info!(%peer, "admitted to the cluster");
                    return Ok(());
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Aborted
                            | tonic::Code::Unknown
                    ) =>
                {
                    last = format!("{peer}: {}", s.message());
                }
                Err(s) => bail!("{peer} refused to admit this node: {}", s.message()),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("could not be admitted within {ADMIT_PATIENCE:?}; last error: {last}");
        }
        tracing::info!(error = %last, "admission not possible yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(3));
    }
}
