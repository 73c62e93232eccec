//! Cluster CA and certificates for Tugboat nodes and clients, kept under `DATA/pki/`.
//!
//! The first node creates a self-signed CA (`ca.crt`/`ca.key`) and signs its own server, peer and
//! admin certificates with it. Nodes joining later pin the CA by [`ca_fingerprint`] and get a node
//! certificate from a CA holder through [`generate_node_csr`] / [`sign_node_csr`]; such nodes have
//! `ca.crt` without `ca.key`, which [`ensure_node_pki`] accepts as long as nothing needs issuing.
//!
//! All keys are ECDSA P-256 with SHA-256 signatures, which both rustls and Go's crypto/tls (the real
//! `etcdctl`) accept.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Common name of the cluster CA certificate.
pub const CA_COMMON_NAME: &str = "tugboat-ca";
/// Common name of the admin client certificate.
pub const ADMIN_COMMON_NAME: &str = "admin";
/// Organization of the admin client certificate; the apiserver maps O to groups.
pub const ADMIN_ORGANIZATION: &str = "system:masters";

const DAY: Duration = Duration::from_secs(24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Certificates start an hour in the past so that a peer whose clock lags a little accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A leaf this close to expiry is re-issued at start-up rather than left to fail in production.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Errors of the PKI module; each names the file or input involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A PEM, certificate or key file exists but cannot be used.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// A private key does not belong to the certificate stored next to it.
    #[error("{key} does not match the public key of {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// Something must be issued but this node does not hold the CA private key.
    #[error("{ca_key} is missing, so {needed} cannot be issued; restore ca.key or get the certificate from a node holding the CA key")]
    CaKeyMissing { ca_key: PathBuf, needed: String },
    /// The CA key exists without its certificate while certificates signed by it exist.
    #[error("{ca_key} exists but {ca_cert} is missing; refusing to replace the CA of existing certificates")]
    CaCertMissing { ca_cert: PathBuf, ca_key: PathBuf },
    /// rcgen refused to build a key, certificate or CSR.
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A node identity holds a name that cannot go into a certificate.
    #[error("invalid node identity: {reason}")]
    InvalidIdentity { reason: String },
    /// A certificate signing request cannot be parsed or is unusable.
    #[error("invalid certificate signing request: {reason}")]
    InvalidCsr { reason: String },
    /// A certificate signing request asks for names the node identity does not cover.
    #[error(
        "certificate signing request for node {node} asks for names outside its identity: {names}"
    )]
    CsrNameNotAllowed { node: String, names: String },
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

/// Paths of a node's PKI files under DATA/pki/.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// DATA/pki
    pub dir: PathBuf,
    /// ca.crt
    pub ca_cert: PathBuf,
    /// ca.key (absent on nodes that joined an existing cluster)
    pub ca_key: PathBuf,
    /// server.crt
    pub server_cert: PathBuf,
    /// server.key
    pub server_key: PathBuf,
    /// peer.crt
    pub peer_cert: PathBuf,
    /// peer.key
    pub peer_key: PathBuf,
    /// admin.crt
    pub admin_cert: PathBuf,
    /// admin.key
    pub admin_key: PathBuf,
}

impl PkiPaths {
    /// Paths under `data_dir/pki`.
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("pki");
        PkiPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            peer_cert: dir.join("peer.crt"),
            peer_key: dir.join("peer.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            dir,
        }
    }
}

/// Names and addresses a node's certificates must be valid for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name; also the certificates' CN and a SAN (DNS, or IP if it parses as one).
    pub name: String,
    /// Extra DNS names.
    pub dns_names: Vec<String>,
    /// Extra IP addresses.
    pub ip_addrs: Vec<IpAddr>,
}

/// PEM bundle ready for tonic's Identity / Certificate (`from_pem`).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate, to verify the other side.
    pub ca_pem: Vec<u8>,
    /// This side's certificate.
    pub cert_pem: Vec<u8>,
    /// This side's private key.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsFiles {
    // The key must never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A CSR and the private key it was made for, as produced by a joining node.
#[derive(Clone)]
pub struct NodeCsr {
    /// PKCS#10 request, PEM.
    pub csr_pem: String,
    /// PKCS#8 private key, PEM; stays on the joining node.
    pub key_pem: String,
}

impl fmt::Debug for NodeCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A subject alternative name, normalised so that sets of them compare meaningfully.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum AltName {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for AltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AltName::Dns(name) => f.write_str(name),
            AltName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl AltName {
    /// Parses a name given by the operator: an IP literal or a DNS name.
    fn parse(text: &str) -> Result<AltName, PkiError> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(AltName::Ip(ip));
        }
        if is_dns_name(text) {
            Ok(AltName::Dns(text.to_ascii_lowercase()))
        } else {
            Err(PkiError::InvalidIdentity {
                reason: format!("{text:?} is neither an IP address nor a DNS name"),
            })
        }
    }

    fn to_san(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            AltName::Ip(ip) => SanType::IpAddress(*ip),
            AltName::Dns(name) => {
                SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|source| PkiError::Generate {
                            what: format!("DNS name {name:?}"),
                            source,
                        })?,
                )
            }
        })
    }
}

/// Letters, digits, '-' and '_' in dot-separated labels; '_' because real hostnames carry it.
fn is_dns_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn join_names(names: &BTreeSet<AltName>) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names a node certificate for `id` may carry: the identity plus loopback.
fn identity_names(id: &NodeIdentity) -> Result<BTreeSet<AltName>, PkiError> {
    let mut names = BTreeSet::from([
        AltName::Dns("localhost".to_string()),
        AltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        AltName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]);
    names.insert(AltName::parse(&id.name)?);
    for name in &id.dns_names {
        names.insert(AltName::parse(name)?);
    }
    names.extend(id.ip_addrs.iter().copied().map(AltName::Ip));
    Ok(names)
}

/// This host's name, if it has a usable one; it goes into the local node's certificates.
fn local_hostname() -> Option<String> {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = raw.trim();
    if is_dns_name(name) {
        Some(name.to_ascii_lowercase())
    } else {
        if !name.is_empty() {
            tracing::warn!(
                hostname = name,
                "hostname is not a valid DNS name; left out of certificates"
            );
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Files

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn bad_file(path: &Path, reason: impl Into<String>) -> PkiError {
    PkiError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(io_err("checking", path))
}

fn read_file(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(io_err("reading", path))
}

/// Writes via a temporary file, fsync and rename, so a crash leaves either the old or the new file.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path
        .parent()
        .ok_or_else(|| bad_file(path, "has no parent directory"))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| bad_file(path, "has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing stale", &tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    // The umask may have stripped bits from `mode`; the final mode must be exactly what we ask.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("setting mode of", &tmp))?;
    file.write_all(data).map_err(io_err("writing", &tmp))?;
    file.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

fn create_pki_dir(dir: &Path) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("creating directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(io_err("setting mode of", dir))
}

/// Reads the first certificate of a PEM file as DER, checking that it parses as X.509.
fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = read_file(path)?;
    cert_der_from_pem(&pem).map_err(|reason| bad_file(path, reason))
}

fn cert_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or_else(|| "no PEM CERTIFICATE block".to_string())?
        .map_err(|e| format!("malformed PEM: {e}"))?;
    parse_x509(&der)?;
    Ok(der.to_vec())
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(format!("not a valid X.509 certificate: {e}")),
    }
}

fn parse_cert_file<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    parse_x509(der).map_err(|reason| bad_file(path, reason))
}

fn read_key(path: &Path) -> Result<KeyPair, PkiError> {
    let pem = read_file(path)?;
    let text = std::str::from_utf8(&pem).map_err(|_| bad_file(path, "not a PEM text file"))?;
    KeyPair::from_pem(text).map_err(|e| bad_file(path, format!("not a usable private key: {e}")))
}

fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    use rcgen::PublicKeyData;
    key.der_bytes() == cert.public_key().subject_public_key.data.as_ref()
}

// ---------------------------------------------------------------------------------------------
// Issuing

struct ClusterCa {
    cert_der: Vec<u8>,
    /// None on nodes that joined an existing cluster.
    issuer: Option<Issuer<'static, KeyPair>>,
}

impl ClusterCa {
    fn issuer(
        &self,
        paths: &PkiPaths,
        needed: &str,
    ) -> Result<&Issuer<'static, KeyPair>, PkiError> {
        self.issuer.as_ref().ok_or_else(|| PkiError::CaKeyMissing {
            ca_key: paths.ca_key.clone(),
            needed: needed.to_string(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

/// Random serials: rcgen's default derives the serial from the public key, which would repeat
/// when the same CSR is signed twice.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte, so the encoded length is stable
    Ok(SerialNumber::from_slice(&bytes))
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate {
        what: format!("key for {what}"),
        source,
    })
}

fn create_ca(paths: &PkiPaths) -> Result<ClusterCa, PkiError> {
    let key = generate_key("the CA")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "CA certificate".to_string(),
            source,
        })?;
    // Key first: a crash in between leaves ca.key alone, which the next start treats as an
    // interrupted creation as long as no certificate refers to it.
    write_atomic(&paths.ca_key, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_atomic(&paths.ca_cert, cert.pem().as_bytes(), CERT_MODE)?;
    tracing::info!(path = %paths.ca_cert.display(), "created cluster CA");
    Ok(ClusterCa {
        cert_der: cert.der().to_vec(),
        issuer: Some(Issuer::new(params, key)),
    })
}

fn load_ca(paths: &PkiPaths, with_key: bool) -> Result<ClusterCa, PkiError> {
    let cert_der = read_cert_der(&paths.ca_cert)?;
    let cert = parse_cert_file(&paths.ca_cert, &cert_der)?;
    if !cert.is_ca() {
        return Err(bad_file(&paths.ca_cert, "is not a CA certificate"));
    }
    let issuer = if with_key {
        let key = read_key(&paths.ca_key)?;
        if !key_matches(&key, &cert) {
            return Err(PkiError::KeyMismatch {
                cert: paths.ca_cert.clone(),
                key: paths.ca_key.clone(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| bad_file(&paths.ca_cert, format!("unusable as issuer: {e}")))?;
        Some(issuer)
    } else {
        None
    };
    Ok(ClusterCa { cert_der, issuer })
}

/// What one leaf certificate must look like.
struct LeafSpec<'a> {
    label: &'static str,
    cert: &'a Path,
    key: &'a Path,
    subject: DistinguishedName,
    usages: Vec<ExtendedKeyUsagePurpose>,
    names: BTreeSet<AltName>,
}

fn leaf_params(
    subject: &DistinguishedName,
    names: &BTreeSet<AltName>,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.clone();
    params.subject_alt_names = names
        .iter()
        .map(AltName::to_san)
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why the leaf must be (re-)issued, or None if the files on disk are fine.
fn leaf_problem(
    spec: &LeafSpec<'_>,
    ca_path: &Path,
    ca_der: &[u8],
) -> Result<Option<String>, PkiError> {
    if !exists(spec.cert)? {
        return Ok(Some(format!("{} is missing", spec.cert.display())));
    }
    if !exists(spec.key)? {
        return Ok(Some(format!("{} is missing", spec.key.display())));
    }
    let der = read_cert_der(spec.cert)?;
    let cert = parse_cert_file(spec.cert, &der)?;
    let key = read_key(spec.key)?;
    if !key_matches(&key, &cert) {
        // A crash between writing the new key and the new certificate leaves exactly this.
        return Ok(Some("key does not match certificate".to_string()));
    }
    let ca = parse_cert_file(ca_path, ca_der)?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Ok(Some("not signed by the current CA".to_string()));
    }
    let renew_at = unix_now() + RENEW_BEFORE.as_secs() as i64;
    if cert.validity().not_after.timestamp() < renew_at {
        return Ok(Some(format!(
            "expires within {} days",
            RENEW_BEFORE.as_secs() / DAY.as_secs()
        )));
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| bad_file(spec.cert, format!("bad extended key usage: {e}")))?;
    let has_usage = |wanted: &ExtendedKeyUsagePurpose| match (&eku, wanted) {
        (Some(e), ExtendedKeyUsagePurpose::ServerAuth) => e.value.server_auth,
        (Some(e), ExtendedKeyUsagePurpose::ClientAuth) => e.value.client_auth,
        _ => false,
    };
    if !spec.usages.iter().all(has_usage) {
        return Ok(Some(
            "extended key usage is not the expected one".to_string(),
        ));
    }
    let present = cert_alt_names(spec.cert, &cert)?;
    let missing: BTreeSet<AltName> = spec.names.difference(&present).cloned().collect();
    if !missing.is_empty() {
        return Ok(Some(format!("SANs lack {}", join_names(&missing))));
    }
    Ok(None)
}

fn cert_alt_names(path: &Path, cert: &X509Certificate<'_>) -> Result<BTreeSet<AltName>, PkiError> {
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| bad_file(path, format!("bad subject alternative names: {e}")))?;
    let mut names = BTreeSet::new();
    let Some(ext) = ext else {
        return Ok(names);
    };
    for general in &ext.value.general_names {
        match general {
            GeneralName::DNSName(name) => {
                names.insert(AltName::Dns(name.to_ascii_lowercase()));
            }
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    names.insert(AltName::Ip(IpAddr::from(v4)));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    names.insert(AltName::Ip(IpAddr::from(v6)));
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

fn issue_leaf(spec: &LeafSpec<'_>, issuer: &Issuer<'static, KeyPair>) -> Result<(), PkiError> {
    let key = generate_key(spec.label)?;
    let cert = leaf_params(&spec.subject, &spec.names, &spec.usages)?
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate {
            what: spec.label.to_string(),
            source,
        })?;
    write_atomic(spec.key, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_atomic(spec.cert, cert.pem().as_bytes(), CERT_MODE)
}

/// Organization (apiserver group) of every node certificate: the apiserver authenticates a
/// certificate with CN `<name>` in this group as `system:node:<name>`, which its node
/// authorizer confines to that node's own objects.
pub const NODES_ORGANIZATION: &str = "system:nodes";

fn node_subject(id: &NodeIdentity) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.name.as_str());
    dn.push(DnType::OrganizationName, NODES_ORGANIZATION);
    dn
}

/// Creates what is missing (CA on a fresh dir; server/peer/admin certs) and keeps what exists.
/// Re-issues the server and peer certificates (signed by the existing CA) when their SANs do not
/// cover `id` (plus localhost, loopback and this host's name), when they were not signed by the CA,
/// or when they expire within 30 days. Returns the paths.
pub fn ensure_node_pki(data_dir: &Path, id: &NodeIdentity) -> Result<PkiPaths, PkiError> {
    let paths = PkiPaths::new(data_dir);
    let mut node_names = identity_names(id)?;
    node_names.extend(local_hostname().map(AltName::Dns));
    create_pki_dir(&paths.dir)?;

    let mut admin_subject = DistinguishedName::new();
    admin_subject.push(DnType::CommonName, ADMIN_COMMON_NAME);
    admin_subject.push(DnType::OrganizationName, ADMIN_ORGANIZATION);
    let leaves = [
        LeafSpec {
            label: "server certificate",
            cert: &paths.server_cert,
            key: &paths.server_key,
            subject: node_subject(id),
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            names: node_names.clone(),
        },
        LeafSpec {
            label: "peer certificate",
            cert: &paths.peer_cert,
            key: &paths.peer_key,
            subject: node_subject(id),
            usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            names: node_names,
        },
        LeafSpec {
            label: "admin certificate",
            cert: &paths.admin_cert,
            key: &paths.admin_key,
            subject: admin_subject,
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            names: BTreeSet::new(),
        },
    ];

    let ca_cert_exists = exists(&paths.ca_cert)?;
    let ca_key_exists = exists(&paths.ca_key)?;
    let ca = match (ca_cert_exists, ca_key_exists) {
        (true, with_key) => load_ca(&paths, with_key)?,
        (false, key_exists) => {
            let mut leaf_exists = false;
            for leaf in &leaves {
                leaf_exists |= exists(leaf.cert)?;
            }
            if key_exists && leaf_exists {
                return Err(PkiError::CaCertMissing {
                    ca_cert: paths.ca_cert.clone(),
                    ca_key: paths.ca_key.clone(),
                });
            }
            if leaf_exists {
                tracing::warn!(dir = %paths.dir.display(), "no CA found; creating a new one and re-issuing all certificates");
            }
            create_ca(&paths)?
        }
    };

    for leaf in &leaves {
        if let Some(reason) = leaf_problem(leaf, &paths.ca_cert, &ca.cert_der)? {
            let issuer = ca.issuer(&paths, &format!("{} ({reason})", leaf.label))?;
            issue_leaf(leaf, issuer)?;
            tracing::info!(path = %leaf.cert.display(), %reason, "issued {}", leaf.label);
        }
    }
    Ok(paths)
}

// ---------------------------------------------------------------------------------------------
// Loading

fn load_tls(ca: &Path, cert: &Path, key: &Path) -> Result<TlsFiles, PkiError> {
    read_cert_der(ca)?;
    read_cert_der(cert)?;
    let key_pem = read_file(key)?;
    match rustls_pemfile::private_key(&mut &key_pem[..]) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(bad_file(key, "no PEM PRIVATE KEY block")),
        Err(e) => return Err(bad_file(key, format!("malformed PEM: {e}"))),
    }
    Ok(TlsFiles {
        ca_pem: read_file(ca)?,
        cert_pem: read_file(cert)?,
        key_pem,
    })
}

/// server.crt/key + ca.crt, checked to parse.
pub fn load_server_tls(paths: &PkiPaths) -> Result<TlsFiles, PkiError> {
    load_tls(&paths.ca_cert, &paths.server_cert, &paths.server_key)
}

/// peer.crt/key + ca.crt, checked to parse.
pub fn load_peer_tls(paths: &PkiPaths) -> Result<TlsFiles, PkiError> {
    load_tls(&paths.ca_cert, &paths.peer_cert, &paths.peer_key)
}

/// admin.crt/key + ca.crt, for in-process clients acting as the operator (tests, tooling).
pub fn load_admin_tls(paths: &PkiPaths) -> Result<TlsFiles, PkiError> {
    load_tls(&paths.ca_cert, &paths.admin_cert, &paths.admin_key)
}

/// SHA-256 fingerprint of the CA certificate's DER, lowercase hex (used by join tokens).
pub fn ca_fingerprint(paths: &PkiPaths) -> Result<String, PkiError> {
    Ok(hex::encode(Sha256::digest(read_cert_der(&paths.ca_cert)?)))
}

/// SHA-256 fingerprint of the first certificate in `pem`, lowercase hex; a joining node compares
/// it with the fingerprint in its join token before trusting a CA it was sent.
pub fn cert_fingerprint(pem: &[u8]) -> Result<String, PkiError> {
    let der = cert_der_from_pem(pem)
        .map_err(|reason| bad_file(Path::new("<certificate PEM>"), reason))?;
    Ok(hex::encode(Sha256::digest(der)))
}

/// A DER certificate as PEM text.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The subject common name of a DER certificate (a node's name in its peer certificate).
pub fn cert_common_name(der: &[u8]) -> Result<String, PkiError> {
    let bad = |reason: String| bad_file(Path::new("<peer certificate>"), reason);
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| bad("no common name".to_string()))?;
    cn.as_str()
        .map(str::to_string)
        .map_err(|e| bad(format!("common name is not a string: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Joining

/// Makes a key and a CSR for a joining node, asking for the names of `id` (plus localhost and
/// loopback); put the host name into `id.dns_names` if it should be covered.
pub fn generate_node_csr(id: &NodeIdentity) -> Result<NodeCsr, PkiError> {
    let names = identity_names(id)?;
    let key = generate_key("node CSR")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = node_subject(id);
    params.subject_alt_names = names
        .iter()
        .map(AltName::to_san)
        .collect::<Result<_, _>>()?;
    let generate_err = |source| PkiError::Generate {
        what: format!("CSR for node {}", id.name),
        source,
    };
    let csr = params.serialize_request(&key).map_err(generate_err)?;
    Ok(NodeCsr {
        csr_pem: csr.pem().map_err(generate_err)?,
        key_pem: key.serialize_pem(),
    })
}

/// Signs a CSR (PEM) with the CA for a node joining the cluster: server+client auth, CN = `id.name`,
/// SANs as requested. Every requested SAN must be one of `id`'s names (or localhost/loopback);
/// a CSR asking for anything else is refused, as is one asking for no name at all. Whatever else
/// the CSR asks for (CA flag, key usages, subject) is ignored.
pub fn sign_node_csr(
    paths: &PkiPaths,
    csr_pem: &str,
    id: &NodeIdentity,
) -> Result<String, PkiError> {
    let allowed = identity_names(id)?;
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::InvalidCsr {
            reason: e.to_string(),
        })?;
    let mut requested = BTreeSet::new();
    for san in &csr.params.subject_alt_names {
        requested.insert(match san {
            SanType::DnsName(name) => AltName::Dns(name.as_str().to_ascii_lowercase()),
            SanType::IpAddress(ip) => AltName::Ip(*ip),
            other => {
                return Err(PkiError::InvalidCsr {
                    reason: format!("unsupported subject alternative name {other:?}"),
                })
            }
        });
    }
    if requested.is_empty() {
        return Err(PkiError::InvalidCsr {
            reason: "requests no subject alternative names".to_string(),
        });
    }
    let refused: BTreeSet<AltName> = requested.difference(&allowed).cloned().collect();
    if !refused.is_empty() {
        return Err(PkiError::CsrNameNotAllowed {
            node: id.name.clone(),
            names: join_names(&refused),
        });
    }
    let ca = load_ca(paths, exists(&paths.ca_key)?)?;
    let issuer = ca.issuer(paths, &format!("a certificate for node {}", id.name))?;
    let usages = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let signed = CertificateSigningRequestParams {
        params: leaf_params(&node_subject(id), &requested, &usages)?,
        public_key: csr.public_key,
    }
    .signed_by(issuer)
    .map_err(|source| PkiError::Generate {
        what: format!("certificate for node {}", id.name),
        source,
    })?;
    tracing::info!(node = %id.name, "signed node certificate");
    Ok(signed.pem())
}

// ---------------------------------------------------------------------------------------------
// Client certificates for the apiserver

/// A client certificate and its private key, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate, signed by the cluster CA.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Subject of a certificate as the apiserver reads it: CN is the user, O values the groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertSubject {
    /// First common name (empty if none).
    pub common_name: String,
    /// Every organization value, in order.
    pub organizations: Vec<String>,
}

/// Most groups (O values) [`issue_client_cert`] can put into one certificate.
pub const MAX_CLIENT_GROUPS: usize = 2;

/// Issues a client certificate (client auth only) for apiserver user `user` (CN) in `groups`
/// (one O each, at most [`MAX_CLIENT_GROUPS`]), valid for `lifetime` (backdated an hour). Needs `ca.key`. Nothing is written.
pub fn issue_client_cert(
    paths: &PkiPaths,
    user: &str,
    groups: &[String],
    lifetime: Duration,
) -> Result<ClientCert, PkiError> {
    if user.is_empty() {
        return Err(PkiError::InvalidIdentity {
            reason: "a client certificate needs a user name".to_string(),
        });
    }
    let ca = load_ca(paths, exists(&paths.ca_key)?)?;
    let issuer = ca.issuer(paths, &format!("a client certificate for {user}"))?;
    client_cert_from(issuer, user, groups, lifetime)
}

/// [`issue_client_cert`] with the CA given as PEM text instead of files, for a process that
/// holds the CA in memory (the apiserver issues its identity towards node agents this way).
pub fn issue_client_cert_from_pem(
    ca_cert_pem: &[u8],
    ca_key_pem: &str,
    user: &str,
    groups: &[String],
    lifetime: Duration,
) -> Result<ClientCert, PkiError> {
    if user.is_empty() {
        return Err(PkiError::InvalidIdentity {
            reason: "a client certificate needs a user name".to_string(),
        });
    }
    let issuer = issuer_from_pem(ca_cert_pem, ca_key_pem)?;
    client_cert_from(&issuer, user, groups, lifetime)
}

/// An issuer from a CA certificate and key given as PEM, checked to belong together.
fn issuer_from_pem(
    ca_cert_pem: &[u8],
    ca_key_pem: &str,
) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let where_ = Path::new("<CA certificate PEM>");
    let der = cert_der_from_pem(ca_cert_pem).map_err(|reason| bad_file(where_, reason))?;
    let cert = parse_x509(&der).map_err(|reason| bad_file(where_, reason))?;
    if !cert.is_ca() {
        return Err(bad_file(where_, "is not a CA certificate"));
    }
    let key = KeyPair::from_pem(ca_key_pem).map_err(|e| {
        bad_file(
            Path::new("<CA key PEM>"),
            format!("not a usable private key: {e}"),
        )
    })?;
    if !key_matches(&key, &cert) {
        return Err(PkiError::KeyMismatch {
            cert: where_.to_path_buf(),
            key: PathBuf::from("<CA key PEM>"),
        });
    }
    Issuer::from_ca_cert_der(&der.as_slice().into(), key)
        .map_err(|e| bad_file(where_, format!("unusable as issuer: {e}")))
}

fn client_cert_from(
    issuer: &Issuer<'static, KeyPair>,
    user: &str,
    groups: &[String],
    lifetime: Duration,
) -> Result<ClientCert, PkiError> {
    // rcgen keeps one value per attribute type, so the second O goes in under the same OID
    // spelled as a custom type; a third cannot be expressed.
    if groups.len() > MAX_CLIENT_GROUPS {
        return Err(PkiError::InvalidIdentity {
            reason: format!(
                "a client certificate can carry at most {MAX_CLIENT_GROUPS} groups, {} given",
                groups.len()
            ),
        });
    }
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, user);
    let org_types = [
        DnType::OrganizationName,
        DnType::CustomDnType(vec![2, 5, 4, 10]),
    ];
    for (group, ty) in groups.iter().zip(org_types) {
        subject.push(ty, group.as_str());
    }
    let key = generate_key("client certificate")?;
    let mut params = leaf_params(
        &subject,
        &BTreeSet::new(),
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    set_validity(&mut params, lifetime);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate {
            what: format!("client certificate for {user}"),
            source,
        })?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving certificate (server auth only) for node `name`'s agent endpoint: CN =
/// `name`, O = [`NODES_ORGANIZATION`], SANs = `name`, `ips`, localhost and loopback; valid for
/// `lifetime` (backdated an hour). Needs `ca.key`. Nothing is written.
pub fn issue_node_serving_cert(
    paths: &PkiPaths,
    name: &str,
    ips: &[IpAddr],
    lifetime: Duration,
) -> Result<ClientCert, PkiError> {
    let id = NodeIdentity {
        name: name.to_string(),
        dns_names: Vec::new(),
        ip_addrs: ips.to_vec(),
    };
    let names = identity_names(&id)?;
    let ca = load_ca(paths, exists(&paths.ca_key)?)?;
    let issuer = ca.issuer(paths, &format!("a serving certificate for node {name}"))?;
    let key = generate_key("serving certificate")?;
    let mut params = leaf_params(
        &node_subject(&id),
        &names,
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    set_validity(&mut params, lifetime);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate {
            what: format!("serving certificate for node {name}"),
            source,
        })?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Why the first certificate in `pem` cannot serve TLS for `name` (a DNS name or an IP
/// literal): no server-auth usage, or `name` missing from its SANs; `Ok(None)` when it can.
pub fn serving_problem(pem: &[u8], name: &str) -> Result<Option<String>, PkiError> {
    let where_ = Path::new("<certificate PEM>");
    let der = cert_der_from_pem(pem).map_err(|reason| bad_file(where_, reason))?;
    let cert = parse_x509(&der).map_err(|reason| bad_file(where_, reason))?;
    let eku = cert
        .extended_key_usage()
        .map_err(|e| bad_file(where_, format!("bad extended key usage: {e}")))?;
    // No EKU extension at all means any usage.
    if eku.is_some_and(|e| !e.value.server_auth && !e.value.any) {
        return Ok(Some(
            "it is not valid for server authentication".to_string(),
        ));
    }
    let wanted = AltName::parse(name)?;
    if !cert_alt_names(where_, &cert)?.contains(&wanted) {
        return Ok(Some(format!("its SANs do not include {wanted}")));
    }
    Ok(None)
}

/// CN and O values of the first certificate in `pem`.
pub fn cert_subject(pem: &[u8]) -> Result<CertSubject, PkiError> {
    let bad = |reason: String| bad_file(Path::new("<certificate PEM>"), reason);
    let der = cert_der_from_pem(pem).map_err(bad)?;
    let cert = parse_x509(&der).map_err(bad)?;
    let subject = cert.subject();
    let parsed = CertSubject {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests;
