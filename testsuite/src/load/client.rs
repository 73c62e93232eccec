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
    /// `http://host:port` or `https://host:port`; a comma-separated list spreads the
    /// connections over several members (see [`connect`]).
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

    /// The URLs of a comma-separated `endpoint`, in order.
    pub fn endpoints(&self) -> Vec<&str> {
        self.endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

fn endpoint_of(url: &str, tls: &Option<TlsFiles>) -> Result<Endpoint, LoadError> {
    let bad = |source| LoadError::Endpoint {
        endpoint: url.to_string(),
        source,
    };
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let is_https = url.starts_with("https://");
    match (tls, is_https) {
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
                "{url} is https:// but no --cacert/--cert/--key were given"
            )))
        }
        (Some(_), false) => {
            return Err(LoadError::Config(format!(
                "{url} is not https:// but TLS files were given"
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
///
/// With several endpoints, `conns` is rounded up to a multiple of their number
/// and channel `i` goes to endpoint `i % n`; the load modes hand channel
/// `id % channels` to client `id`, so clients spread evenly over the members.
pub async fn connect(target: &Target, conns: usize) -> Result<Vec<Channel>, LoadError> {
    let urls = target.endpoints();
    if urls.is_empty() {
        return Err(LoadError::Config("no endpoint given".into()));
    }
    let eps = urls
        .iter()
        .map(|u| endpoint_of(u, &target.tls))
        .collect::<Result<Vec<_>, _>>()?;
    let total = conns.max(1).div_ceil(eps.len()) * eps.len();
    let mut channels = Vec::with_capacity(total);
    for i in 0..total {
        let ch = eps[i % eps.len()]
            .connect()
            .await
            .map_err(|source| LoadError::Connect {
                endpoint: urls[i % urls.len()].to_string(),
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
    use super::{prefix_end, Target};

    #[test]
    fn endpoint_lists_split_on_commas() {
        let t = Target::plain("http://a:1, http://b:2,,http://c:3");
        assert_eq!(
            t.endpoints(),
            vec!["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(Target::plain("http://a:1").endpoints(), vec!["http://a:1"]);
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"lg/"), b"lg0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
