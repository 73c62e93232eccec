//! ES256 JSON Web Tokens signed with the cluster CA key (ServiceAccount tokens).
//!
//! Compact serialization only: `base64url(header).base64url(claims).base64url(r || s)`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Tolerated clock skew for `nbf` and `iat`, seconds.
pub const NBF_LEEWAY_SECONDS: i64 = 60;

/// Why a key cannot be loaded or a token cannot be issued or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The key PEM or the certificate is unusable.
    #[error("unusable key: {0}")]
    Key(String),
    /// Issuing needs the private key, but only the public key is loaded.
    #[error("this key can only verify tokens (the CA private key is not available)")]
    NoSigningKey,
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than ES256.
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
}

/// The `kubernetes.io` claim's object references.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRefClaim {
    /// Object name.
    pub name: String,
    /// Object uid.
    #[serde(default)]
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    /// ServiceAccount namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectRefClaim,
    /// The Secret the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRefClaim>,
    /// The Ship the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ship: Option<ObjectRefClaim>,
}

/// The claims of a ServiceAccount token (as Kubernetes writes them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    #[serde(default)]
    pub iss: String,
    /// Subject: `system:serviceaccount:<ns>:<name>`.
    #[serde(default)]
    pub sub: String,
    /// Audiences (a JSON string or array on input; always an array on output).
    #[serde(default, deserialize_with = "string_or_array")]
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    #[serde(default)]
    pub exp: i64,
    /// Not before, Unix seconds.
    #[serde(default)]
    pub nbf: i64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: i64,
    /// Token id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// `kubernetes.io` claim.
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes: Option<KubernetesClaim>,
}

fn string_or_array<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    typ: String,
}

/// The ES256 key of the cluster: the CA key pair for signing, or only its public key.
pub struct JwtKey {
    signer: Option<EcdsaKeyPair>,
    public: Vec<u8>,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("can_sign", &self.signer.is_some())
            .finish()
    }
}

impl JwtKey {
    /// A signing key from the CA's PKCS#8 PEM (`DATA/pki/ca.key`, ECDSA P-256).
    pub fn from_pem(ca_key_pem: &str) -> Result<JwtKey, JwtError> {
        let der = match rustls_pemfile::private_key(&mut ca_key_pem.as_bytes()) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => der,
            Ok(Some(_)) => return Err(JwtError::Key("not a PKCS#8 private key".into())),
            Ok(None) => return Err(JwtError::Key("no PEM PRIVATE KEY block".into())),
            Err(e) => return Err(JwtError::Key(format!("malformed PEM: {e}"))),
        };
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| JwtError::Key(format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(JwtKey {
            kid: key_id(&public),
            signer: Some(pair),
            public,
            rng,
        })
    }

    /// A verifying key from the CA certificate (DER), for members without `ca.key`.
    pub fn verify_only(ca_cert_der: &[u8]) -> Result<JwtKey, JwtError> {
        let (_, cert) = x509_parser::parse_x509_certificate(ca_cert_der)
            .map_err(|e| JwtError::Key(format!("CA certificate does not parse: {e}")))?;
        let public = cert.public_key().subject_public_key.data.to_vec();
        if public.len() != 65 || public[0] != 4 {
            return Err(JwtError::Key(
                "CA certificate does not hold an uncompressed P-256 public key".into(),
            ));
        }
        Ok(JwtKey {
            kid: key_id(&public),
            signer: None,
            public,
            rng: SystemRandom::new(),
        })
    }

    /// Whether this key can issue tokens.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// Key id put into token headers (base64url SHA-256 of the public key).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed compact JWT carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, JwtError> {
        let signer = self.signer.as_ref().ok_or(JwtError::NoSigningKey)?;
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
            typ: String::new(),
        };
        let header = serde_json::to_vec(&header).map_err(|_| JwtError::Sign)?;
        let body = serde_json::to_vec(claims).map_err(|_| JwtError::Sign)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(body)
        );
        let sig = signer
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| JwtError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Checks the signature, `exp` and `nbf` (at Unix time `now`) and returns the claims.
    /// Issuer and audience are the caller's business.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts".into()));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| JwtError::Malformed(format!("{what} is not base64url: {e}")))
        };
        let header: Header = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
        if header.alg != "ES256" {
            return Err(JwtError::Algorithm(header.alg));
        }
        let sig = decode(s, "signature")?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| JwtError::Signature)?;
        let claims: Claims = serde_json::from_slice(&decode(c, "claims")?)
            .map_err(|e| JwtError::Malformed(format!("claims: {e}")))?;
        if claims.exp == 0 || now >= claims.exp {
            return Err(JwtError::Expired);
        }
        if claims.nbf != 0 && now + NBF_LEEWAY_SECONDS < claims.nbf {
            return Err(JwtError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Whether `token` has the shape of a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(_), None) if !h.is_empty() && !c.is_empty() => URL_SAFE_NO_PAD
            .decode(h)
            .is_ok_and(|b| b.first() == Some(&b'{')),
        _ => false,
    }
}

fn key_id(public: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(public))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh cluster CA made by `tugboat-pki`: (`ca.key` PEM, `ca.crt` DER, `ca.crt` PEM).
    pub(crate) fn test_ca() -> (String, Vec<u8>, String) {
        let dir = tempfile::tempdir().unwrap();
        let id = tugboat_pki::NodeIdentity {
            name: "node-1".into(),
            ..Default::default()
        };
        let paths = tugboat_pki::ensure_node_pki(dir.path(), &id).unwrap();
        let key = std::fs::read_to_string(&paths.ca_key).unwrap();
        let cert_pem = std::fs::read_to_string(&paths.ca_cert).unwrap();
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec();
        (key, der, cert_pem)
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "https://tugboat.local".into(),
            sub: "system:serviceaccount:default:bot".into(),
            aud: vec!["tugboat".into()],
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: "id-1".into(),
            kubernetes: Some(KubernetesClaim {
                namespace: "default".into(),
                serviceaccount: ObjectRefClaim {
                    name: "bot".into(),
                    uid: "u1".into(),
                },
                secret: None,
                ship: None,
            }),
        }
    }

    #[test]
    fn issue_then_verify() {
        let (pem, _, _) = test_ca();
        let key = JwtKey::from_pem(&pem).unwrap();
        let now = 1_700_000_000;
        let token = key.issue(&claims(now)).unwrap();
        assert!(looks_like_jwt(&token));
        assert_eq!(key.verify(&token, now + 1).unwrap(), claims(now));
    }

    #[test]
    fn verify_only_key_from_ca_certificate() {
        let (pem, der, _) = test_ca();
        let key = JwtKey::from_pem(&pem).unwrap();
        let public = JwtKey::verify_only(&der).unwrap();
        assert!(!public.can_sign());
        assert_eq!(public.kid(), key.kid());
        let now = 1_700_000_000;
        let token = key.issue(&claims(now)).unwrap();
        assert_eq!(public.verify(&token, now).unwrap(), claims(now));
        assert_eq!(public.issue(&claims(now)), Err(JwtError::NoSigningKey));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let (pem, _, _) = test_ca();
        let key = JwtKey::from_pem(&pem).unwrap();
        let now = 1_700_000_000;
        let token = key.issue(&claims(now)).unwrap();
        assert_eq!(key.verify(&token, now + 600), Err(JwtError::Expired));
        assert_eq!(
            key.verify(&token, now - NBF_LEEWAY_SECONDS - 1),
            Err(JwtError::NotYetValid)
        );
    }

    #[test]
    fn tampered_claims_or_other_key_fail() {
        let (pem, _, _) = test_ca();
        let key = JwtKey::from_pem(&pem).unwrap();
        let now = 1_700_000_000;
        let token = key.issue(&claims(now)).unwrap();
        let mut forged = claims(now);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_body, parts[2]);
        assert_eq!(key.verify(&tampered, now), Err(JwtError::Signature));

        let (other_pem, _, _) = test_ca();
        let other = JwtKey::from_pem(&other_pem).unwrap();
        assert_eq!(other.verify(&token, now), Err(JwtError::Signature));

        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(
            key.verify(&none_alg, now),
            Err(JwtError::Algorithm("none".into()))
        );
        assert!(matches!(
            key.verify("a.b", now),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn audience_may_be_a_string() {
        let c: Claims = serde_json::from_str(r#"{"aud":"x","exp":5}"#).unwrap();
        assert_eq!(c.aud, vec!["x".to_string()]);
    }
}
