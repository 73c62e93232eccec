//! Listener addresses and the rules they must follow.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A listener address that is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address could not be parsed.
    #[error("{flag}: '{value}' is not an address of the form IP:PORT")]
    Malformed {
        /// The flag that carried it.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A plaintext listener on an address other hosts can reach.
    #[error("{flag}: refusing plaintext on {addr}: only loopback addresses (127.0.0.0/8, ::1) may serve without TLS")]
    PlainNotLoopback {
        /// The flag that carried it.
        flag: &'static str,
        /// The refused address.
        addr: SocketAddr,
    },
}

/// Parses `IP:PORT` for `flag`.
pub fn parse(flag: &'static str, value: &str) -> Result<SocketAddr, ListenError> {
    value.parse().map_err(|_| ListenError::Malformed {
        flag,
        value: value.to_string(),
    })
}

/// Parses a plaintext listener address, which must be loopback.
pub fn parse_plain(flag: &'static str, value: &str) -> Result<SocketAddr, ListenError> {
    let addr = parse(flag, value)?;
    if !addr.ip().is_loopback() {
        return Err(ListenError::PlainNotLoopback { flag, addr });
    }
    Ok(addr)
}

/// The address other members and clients should use to reach a listener.
pub fn advertised(listen: SocketAddr, advertise: Option<IpAddr>) -> SocketAddr {
    let ip = match advertise {
        Some(ip) => ip,
        None if listen.ip().is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => listen.ip(),
    };
    SocketAddr::new(ip, listen.port())
}

/// `scheme://addr` with IPv6 brackets.
pub fn url(scheme: &str, addr: SocketAddr) -> String {
    format!("{scheme}://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback() {
        assert!(parse_plain("--etcd-listen-plain", "127.0.0.1:2379").is_ok());
        assert!(parse_plain("--etcd-listen-plain", "[::1]:2379").is_ok());
        assert!(matches!(
            parse_plain("--etcd-listen-plain", "0.0.0.0:2379"),
            Err(ListenError::PlainNotLoopback { .. })
        ));
        assert!(matches!(
            parse_plain("--etcd-listen-plain", "10.1.2.3:2379"),
            Err(ListenError::PlainNotLoopback { .. })
        ));
        assert!(matches!(
            parse("--etcd-listen", "nonsense"),
            Err(ListenError::Malformed { .. })
        ));
    }

    #[test]
    fn advertise_defaults() {
        let any: SocketAddr = "0.0.0.0:2379".parse().unwrap();
        assert_eq!(advertised(any, None).to_string(), "127.0.0.1:2379");
        let one: SocketAddr = "192.0.2.7:2379".parse().unwrap();
        assert_eq!(advertised(one, None), one);
        assert_eq!(url("https", "[::1]:1".parse().unwrap()), "https://[::1]:1");
    }
}
