//! Join tokens: what a new member presents to join a cluster. A token
//! carries the cluster CA's SHA-256 fingerprint (so the joiner can verify the
//! cluster before it sends anything secret), the peer addresses to dial, an
//! id and a secret. The cluster stores only a hash of the secret, with an
//! expiry and an optional number of uses.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Key prefix of token records in the replicated store.
pub const TOKEN_KEY_PREFIX: &str = "/tugboat/join-tokens/";
/// Version tag that starts every encoded token.
const TOKEN_PREFIX: &str = "tgb1";

/// A token as handed to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id (16 hex digits), also the record's key.
    pub id: String,
    /// Secret (32 hex digits); only its hash is stored.
    pub secret: String,
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_fingerprint: String,
    /// Peer addresses (`host:port`) of members to dial.
    pub peers: Vec<String>,
}

/// The stored form of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Expiry time, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Remaining uses; `None` = unlimited until expiry.
    pub uses_left: Option<u32>,
    /// Names of the nodes that used it: the same node may retry its join with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redeemed_by: Vec<String>,
}

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The text is not a Tugboat join token.
    #[error("malformed join token: {0}")]
    Malformed(&'static str),
    /// No record with this id (never created, revoked, or expired and removed).
    #[error("join token {0} is unknown, revoked or expired")]
    Unknown(String),
    /// The record exists but its time is up.
    #[error("join token {0} has expired")]
    Expired(String),
    /// A single- or N-use token that is used up.
    #[error("join token {0} has no uses left")]
    UsedUp(String),
    /// The secret does not match.
    #[error("join token {0}: wrong secret")]
    WrongSecret(String),
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

impl JoinToken {
    /// A fresh token with random id and secret.
    pub fn generate(ca_fingerprint: &str, peers: Vec<String>) -> JoinToken {
        JoinToken {
            id: random_hex(8),
            secret: random_hex(16),
            ca_fingerprint: ca_fingerprint.to_ascii_lowercase(),
            peers,
        }
    }

    /// `tgb1.<id>.<secret>.<ca sha256>.<hex of comma-separated peers>`: one
    /// word, safe to paste into a shell.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}.{}",
            self.id,
            self.secret,
            self.ca_fingerprint,
            hex::encode(self.peers.join(","))
        )
    }

    /// Parses [`JoinToken::encode`]'s form.
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, id, secret, fp, peers] = parts.as_slice() else {
            return Err(TokenError::Malformed("expected 5 dot-separated parts"));
        };
        if *prefix != TOKEN_PREFIX {
            return Err(TokenError::Malformed("unknown token version"));
        }
        if !is_hex(id, 16) || !is_hex(secret, 32) || !is_hex(fp, 64) {
            return Err(TokenError::Malformed(
                "id, secret or CA fingerprint is not lowercase hex of the right length",
            ));
        }
        let peers =
            hex::decode(peers).map_err(|_| TokenError::Malformed("peer list is not hex"))?;
        let peers = String::from_utf8(peers)
            .map_err(|_| TokenError::Malformed("peer list is not UTF-8"))?;
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: fp.to_string(),
            peers: peers
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// The store key of this token's record.
    pub fn key(&self) -> String {
        format!("{TOKEN_KEY_PREFIX}{}", self.id)
    }

    /// The record to store for this token.
    pub fn record(&self, now: u64, ttl_secs: u64, uses: Option<u32>) -> TokenRecord {
        TokenRecord {
            secret_sha256: secret_hash(&self.secret),
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            uses_left: uses,
            redeemed_by: Vec::new(),
        }
    }
}

/// SHA-256 of a secret, lowercase hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl TokenRecord {
    /// Checks a presented secret at time `now`; on success returns the record
    /// to store afterwards (`None`: delete it, the last use was consumed).
    pub fn redeem(
        &self,
        id: &str,
        secret: &str,
        now: u64,
    ) -> Result<Option<TokenRecord>, TokenError> {
        let presented = secret_hash(secret);
        // Compare without an early exit, so timing does not reveal the hash prefix.
        let same = presented.len() == self.secret_sha256.len()
            && presented
                .bytes()
                .zip(self.secret_sha256.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(TokenError::WrongSecret(id.to_string()));
        }
        if now >= self.expires_at {
            return Err(TokenError::Expired(id.to_string()));
        }
        match self.uses_left {
            None => Ok(Some(self.clone())),
            Some(0) => Err(TokenError::UsedUp(id.to_string())),
            Some(1) => Ok(None),
            Some(n) => Ok(Some(TokenRecord {
                uses_left: Some(n - 1),
                ..self.clone()
            })),
        }
    }

    /// Like [`TokenRecord::redeem`] for node `name`, keeping the record: a node that already used
    /// the token may present it again (a retried join) without using it up. Returns the record to
    /// store, or `None` when nothing changes.
    pub fn redeem_for(
        &self,
        id: &str,
        secret: &str,
        name: &str,
        now: u64,
    ) -> Result<Option<TokenRecord>, TokenError> {
        if self.redeemed_by.iter().any(|n| n == name) {
            // Secret and expiry still apply to a retry.
            let retry = TokenRecord {
                uses_left: None,
                ..self.clone()
            };
            retry.redeem(id, secret, now)?;
            return Ok(None);
        }
        self.redeem(id, secret, now)?;
        let mut next = self.clone();
        next.uses_left = self.uses_left.map(|n| n.saturating_sub(1));
        next.redeemed_by.push(name.to_string());
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let t = JoinToken::generate(
            &"ab".repeat(32),
            vec!["10.0.0.1:2380".into(), "[::1]:2380".into()],
        );
        let text = t.encode();
        assert!(!text.contains(' ') && !text.contains(':'));
        assert_eq!(JoinToken::parse(&text).unwrap(), t);
        assert!(JoinToken::parse("tgb1.x.y.z.w").is_err());
        assert!(JoinToken::parse("nonsense").is_err());
        let mut bad = text.clone();
        bad.replace_range(0..4, "tgb9");
        assert_eq!(
            JoinToken::parse(&bad),
            Err(TokenError::Malformed("unknown token version"))
        );
    }

    #[test]
    fn redeem_rules() {
        let t = JoinToken::generate(&"00".repeat(32), vec![]);
        let rec = t.record(100, 60, Some(2));
        assert!(
            !rec.secret_sha256.contains(&t.secret),
            "only the hash is stored"
        );
        let after_one = rec.redeem(&t.id, &t.secret, 120).unwrap().unwrap();
        assert_eq!(after_one.uses_left, Some(1));
        assert_eq!(
            after_one.redeem(&t.id, &t.secret, 130).unwrap(),
            None,
            "last use deletes it"
        );
        assert!(matches!(
            rec.redeem(&t.id, "00", 120),
            Err(TokenError::WrongSecret(_))
        ));
        assert!(matches!(
            rec.redeem(&t.id, &t.secret, 160),
            Err(TokenError::Expired(_))
        ));
        let unlimited = t.record(100, 60, None);
        assert_eq!(
            unlimited.redeem(&t.id, &t.secret, 101).unwrap(),
            Some(unlimited.clone())
        );
        // Per-node redemption: a retry by the same node is free, another node finds it used up.
        let single = t.record(100, 60, Some(1));
        let used = single
            .redeem_for(&t.id, &t.secret, "b", 110)
            .unwrap()
            .unwrap();
        assert_eq!(used.uses_left, Some(0));
        assert_eq!(used.redeem_for(&t.id, &t.secret, "b", 111).unwrap(), None);
        assert!(matches!(
            used.redeem_for(&t.id, &t.secret, "c", 111),
            Err(TokenError::UsedUp(_))
        ));
        assert!(matches!(
            used.redeem_for(&t.id, "00", "b", 111),
            Err(TokenError::WrongSecret(_))
        ));
        assert!(matches!(
            used.redeem_for(&t.id, &t.secret, "b", 200),
            Err(TokenError::Expired(_))
        ));
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("secretSha256") && json.contains("usesLeft"));
    }
}
