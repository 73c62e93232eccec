//! Trust on first contact, pinned: a joiner knows only the SHA-256 of the
//! cluster CA (from its token). Members send the CA along with their peer
//! certificate; the handshake succeeds only if one of the certificates sent
//! has the pinned fingerprint and the member's certificate verifies against
//! it. Nothing secret is sent before this handshake has succeeded.

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the pinned handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
    /// The CA that matched, or the fingerprints the peer presented instead.
    outcome: Mutex<Result<CertificateDer<'static>, Vec<String>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<String> = intermediates
            .iter()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .collect();
        let Some(pos) = presented.iter().position(|fp| *fp == self.pin) else {
            *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Err(presented);
            return Err(rustls::Error::General(
                "the peer's CA does not match the join token".into(),
            ));
        };
        let ca = intermediates[pos].clone().into_owned();
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Ok(ca);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why the pinned CA could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The peer answered with a different CA: wrong cluster, or someone in between.
    #[error("CA fingerprint mismatch: the join token pins {pinned}, but {peer} presented {presented}; is the token for this cluster?")]
    Mismatch {
        /// The peer address.
        peer: String,
        /// Fingerprint from the token.
        pinned: String,
        /// What the peer sent.
        presented: String,
    },
    /// The peer could not be reached or the handshake failed for another reason.
    #[error("{0:#}")]
    Unreachable(anyhow::Error),
}

/// Connects to `peer` (`host:port`) and returns the cluster CA certificate (PEM) once the peer
/// has proven a certificate issued by the CA whose SHA-256 is `pin`.
pub async fn fetch_pinned_ca(peer: &str, pin: &str) -> Result<String, PinError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        pin: pin.to_ascii_lowercase(),
        provider: provider.clone(),
        outcome: Mutex::new(Err(Vec::new())),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PinError::Unreachable(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let host = peer
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(peer);
    let server_name = ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a host name or address"))
        .map_err(PinError::Unreachable)?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(peer)
            .await
            .with_context(|| format!("connecting to {peer}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {peer}"))
    };
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no TLS handshake with {peer} within {HANDSHAKE_TIMEOUT:?}"
            ))
        });
    let outcome = verifier
        .outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match (result, outcome) {
        (Ok(_stream), Ok(ca)) => Ok(tugboat_pki::cert_der_to_pem(ca.as_ref())),
        (Err(_), Err(presented)) if !presented.is_empty() => Err(PinError::Mismatch {
            peer: peer.to_string(),
            pinned: pin.to_string(),
            presented: presented.join(", "),
        }),
        (Err(e), _) => Err(PinError::Unreachable(e)),
        (Ok(_), Err(_)) => Err(PinError::Unreachable(anyhow::anyhow!(
            "{peer} sent no CA certificate with its own; it cannot be verified against the token"
        ))),
    }
}
