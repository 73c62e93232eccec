//! How local tools find and reach this host's member: `DATA/tugboatd.json`
//! (written at start) and the admin certificate in `DATA/pki`.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

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

/// A channel to the local member's etcd API as the cluster admin.
pub async fn admin_channel(data_dir: &Path) -> anyhow::Result<(MemberFile, Channel)> {
    let member = read_member_file(data_dir)?;
    let paths = tugboat_pki::PkiPaths::new(data_dir);
    let tls = tugboat_pki::load_admin_tls(&paths).context("loading the admin certificate")?;
    let channel = Channel::from_shared(member.client_url.clone())
        .with_context(|| format!("bad client URL {}", member.client_url))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
        )?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", member.client_url))?;
    Ok((member, channel))
}

/// A channel to another member's etcd API (`url`) as the cluster admin.
pub async fn admin_channel_to(data_dir: &Path, url: &str) -> anyhow::Result<Channel> {
    let paths = tugboat_pki::PkiPaths::new(data_dir);
    let tls = tugboat_pki::load_admin_tls(&paths).context("loading the admin certificate")?;
    Channel::from_shared(url.to_string())
        .with_context(|| format!("bad client URL {url}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
        )?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}
