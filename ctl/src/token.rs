//! `tugboat token create|list|revoke`: join tokens kept (hashed) in the
//! replicated store, each on a lease so it disappears when it expires.

use crate::local::{admin_channel, member_list, prefix_range};
use anyhow::{bail, Context};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tugboat_consensus::join_token::{JoinToken, TokenRecord, TOKEN_KEY_PREFIX};
use tugboat_store::pb::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, DeleteRangeRequest, LeaseGrantRequest,
    PutRequest,
};

/// Parses durations like `90s`, `30m`, `1h`, `1h30m`, `7d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => bail!("bad duration {text:?}: unknown unit {c:?} (use s, m, h or d)"),
        };
        let n: u64 = digits
            .parse()
            .with_context(|| format!("bad duration {text:?}: a number must precede {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .with_context(|| format!("duration {text:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        bail!("bad duration {text:?}: missing unit after {digits} (use s, m, h or d)");
    }
    if total == 0 {
        bail!("bad duration {text:?}: must be longer than zero");
    }
    Ok(Duration::from_secs(total))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Creates a token valid for `ttl`, usable `uses` times (unlimited when `None`); returns its text.
pub async fn create(data_dir: &Path, ttl: Duration, uses: Option<u32>) -> anyhow::Result<String> {
    if uses == Some(0) {
        bail!("--uses must be at least 1");
    }
    let (_, channel) = admin_channel(data_dir).await?;
    let members = member_list(&channel).await?;
    let peers: Vec<String> = members
        .iter()
        .flat_map(|m| m.peer_ur_ls.iter())
        .map(|u| {
            u.trim_start_matches("https://")
                .trim_start_matches("http://")
                .to_string()
        })
        .collect();
    let fingerprint = tugboat_pki::ca_fingerprint(&tugboat_pki::PkiPaths::new(data_dir))?;
    let token = JoinToken::generate(&fingerprint, peers);
    let record = token.record(now_secs(), ttl.as_secs(), uses);
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest {
            ttl: ttl.as_secs() as i64,
            id: 0,
        })
        .await
        .context("granting the token's lease")?
        .into_inner()
        .id;
    KvClient::new(channel)
        .put(PutRequest {
            key: token.key().into_bytes(),
            value: serde_json::to_vec(&record)?,
            lease,
            ..Default::default()
        })
        .await
        .context("storing the token")?;
    Ok(token.encode())
}

/// One listed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Token id.
    pub id: String,
    /// The stored record.
    pub record: TokenRecord,
}

/// Every stored token.
pub async fn list(data_dir: &Path) -> anyhow::Result<Vec<TokenInfo>> {
    let (_, channel) = admin_channel(data_dir).await?;
    let kvs = KvClient::new(channel)
        .range(prefix_range(TOKEN_KEY_PREFIX))
        .await
        .context("listing tokens")?
        .into_inner()
        .kvs;
    kvs.into_iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let id = key.trim_start_matches(TOKEN_KEY_PREFIX).to_string();
            let record: TokenRecord = serde_json::from_slice(&kv.value)
                .with_context(|| format!("token record {key} is not valid"))?;
            Ok(TokenInfo { id, record })
        })
        .collect()
}

/// Deletes a token; fails when there is none with this id.
pub async fn revoke(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let (_, channel) = admin_channel(data_dir).await?;
    let deleted = KvClient::new(channel)
        .delete_range(DeleteRangeRequest {
            key: format!("{TOKEN_KEY_PREFIX}{id}").into_bytes(),
            ..Default::default()
        })
        .await
        .context("revoking the token")?
        .into_inner()
        .deleted;
    if deleted == 0 {
        bail!("no join token with id {id:?} (already revoked or expired?)");
    }
    Ok(())
}

/// A table of tokens for humans.
pub fn render(tokens: &[TokenInfo]) -> String {
    let now = now_secs();
    let mut out = format!("{:<18} {:<12} {}\n", "ID", "EXPIRES IN", "USES LEFT");
    for t in tokens {
        let left = t.record.expires_at.saturating_sub(now);
        let uses = t
            .record
            .uses_left
            .map_or("unlimited".to_string(), |n| n.to_string());
        out.push_str(&format!(
            "{:<18} {:<12} {}\n",
            t.id,
            format!("{}m{:02}s", left / 60, left % 60),
            uses
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        for bad in ["", "10", "h", "5x", "0s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
