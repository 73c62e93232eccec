//! Connecting to an etcd v3 endpoint over plain HTTP/2 or mutual TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::LoadError;

/// Client certificate material for an `https://` endpoint.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA that signed the server certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client private key (PEM).
    pub key: PathBuf,
    /// Name to verify the server certificate against, when not the URL's host.
    pub server_name: Option<String>,
}

/// Where to send load.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// Required for `https://`.
    pub tls: Option<TlsFiles>,
}

impl Target {
    /// A plaintext target.
    pub fn plain(endpoint: impl Into<String>) -> Self {
        Target {
            endpoint: endpoint.into(),
            tls: None,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

fn endpoint_of(target: &Target) -> Result<Endpoint, LoadError> {
    let bad = |source| LoadError::Endpoint {
        endpoint: target.endpoint.clone(),
        source,
    };
    let mut ep = Endpoint::from_shared(target.endpoint.clone())
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let is_https = target.endpoint.starts_with("https://");
    match (&target.tls, is_https) {
        (Some(files), true) => {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&files.ca)?))
                .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
            if let Some(name) = &files.server_name {
                tls = tls.domain_name(name.clone());
            }
            ep = ep.tls_config(tls).map_err(bad)?;
        }
        (None, true) => {
            return Err(LoadError::Config(format!(
                "{} is https:// but no --cacert/--cert/--key were given",
                target.endpoint
            )))
        }
        (Some(_), false) => {
            return Err(LoadError::Config(format!(
                "{} is not https:// but TLS files were given",
                target.endpoint
            )))
        }
        (None, false) => {}
    }
    Ok(ep)
}

/// Opens `conns` independent HTTP/2 connections to `target`.
///
/// Each call to `Endpoint::connect` dials its own TCP connection, so clients
/// spread over these channels do not all queue behind one HTTP/2 connection.
pub async fn connect(target: &Target, conns: usize) -> Result<Vec<Channel>, LoadError> {
    let ep = endpoint_of(target)?;
    let mut channels = Vec::with_capacity(conns.max(1));
    for _ in 0..conns.max(1) {
        let ch = ep.connect().await.map_err(|source| LoadError::Connect {
            endpoint: target.endpoint.clone(),
            source,
        })?;
        channels.push(ch);
    }
    Ok(channels)
}

/// The etcd `range_end` that selects every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): etcd's convention for "to the end of the keyspace".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"lg/"), b"lg0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
