//! How local tools find and reach this host's member: `DATA/tugboatd.json`
//! (written at start) and the admin certificate in `DATA/pki`.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tugboat_store::pb::etcdserverpb::{
    cluster_client::ClusterClient, Member, MemberListRequest, RangeRequest,
};

/// File name of the member description in the data dir.
pub const MEMBER_FILE: &str = "tugboatd.json";

/// What a running member tells local tools about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberFile {
    /// Member name.
    pub name: String,
    /// Advertised etcd client URL (mTLS).
    pub client_url: String,
    /// Advertised raft peer URL.
    pub peer_url: String,
}

/// Writes the member file atomically.
pub fn write_member_file(data_dir: &Path, m: &MemberFile) -> anyhow::Result<()> {
    let path = data_dir.join(MEMBER_FILE);
    let tmp = data_dir.join(format!("{MEMBER_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(m)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads the member file of `data_dir`.
pub fn read_member_file(data_dir: &Path) -> anyhow::Result<MemberFile> {
    let path = data_dir.join(MEMBER_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (is tugboatd running with --data-dir {}?)",
            path.display(),
            data_dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A TLS channel to `url` verified against `ca_pem`, presenting `identity` (certificate and key
/// PEM) when given; `request` bounds every call (leave it out for long-lived streams).
pub async fn tls_channel(
    url: &str,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    connect: Duration,
    request: Option<Duration>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let mut endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("bad URL {url:?}"))?
        .tls_config(tls)?
        .connect_timeout(connect);
    if let Some(request) = request {
        endpoint = endpoint.timeout(request);
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A channel to the local member's etcd API as the cluster admin.
pub async fn admin_channel(data_dir: &Path) -> anyhow::Result<(MemberFile, Channel)> {
    let member = read_member_file(data_dir)?;
    let channel = admin_channel_with(
        data_dir,
        &member.client_url,
        Duration::from_secs(5),
        Duration::from_secs(15),
    )
    .await?;
    Ok((member, channel))
}

/// A channel to another member's etcd API (`url`) as the cluster admin.
pub async fn admin_channel_to(data_dir: &Path, url: &str) -> anyhow::Result<Channel> {
    admin_channel_with(
        data_dir,
        url,
        Duration::from_secs(3),
        Duration::from_secs(5),
    )
    .await
}

async fn admin_channel_with(
    data_dir: &Path,
    url: &str,
    connect: Duration,
    request: Duration,
) -> anyhow::Result<Channel> {
    let paths = tugboat_pki::PkiPaths::new(data_dir);
    let tls = tugboat_pki::load_admin_tls(&paths).context("loading the admin certificate")?;
    let identity = Some((tls.cert_pem.as_slice(), tls.key_pem.as_slice()));
    tls_channel(url, &tls.ca_pem, identity, connect, Some(request)).await
}

/// Every member of the cluster, from a linearizable member list.
pub async fn member_list(channel: &Channel) -> anyhow::Result<Vec<Member>> {
    Ok(ClusterClient::new(channel.clone())
        .member_list(MemberListRequest { linearizable: true })
        .await
        .context("listing members")?
        .into_inner()
        .members)
}

/// A range over every key that starts with `prefix` (etcd's prefix range end: the prefix with
/// its last byte below 0xff incremented).
pub fn prefix_range(prefix: &str) -> RangeRequest {
    let key = prefix.as_bytes().to_vec();
    let mut end = key.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            break;
        }
    }
    RangeRequest {
        key,
        range_end: if end.is_empty() { vec![0] } else { end },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_range_ends_after_the_prefix() {
        let r = super::prefix_range("/tugboat/workers/");
        assert_eq!(r.key, b"/tugboat/workers/");
        assert_eq!(r.range_end, b"/tugboat/workers0");
        // The empty prefix is the whole key space ("\0" as the end means "to the end").
        assert_eq!(super::prefix_range("").range_end, vec![0]);
    }
}
