//! Deterministic MAC addresses: the same Ship and NIC get the same address on every node, so a
//! guest keeps its network identity across restarts and migrations.

use sha2::{Digest, Sha256};

/// A MAC address for NIC `nic` of the Ship with UID `uid`: locally administered, unicast
/// (`x2:…`), derived from a SHA-256 of both.
pub fn for_nic(uid: &str, nic: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tugboat-mac\0");
    h.update(uid.as_bytes());
    h.update(b"\0");
    h.update(nic.as_bytes());
    let d = h.finalize();
    // Bit 1 of the first octet: locally administered; bit 0 cleared: unicast.
    let first = (d[0] & 0xfc) | 0x02;
    format!(
        "{first:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[1], d[2], d[3], d[4], d[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast_and_distinct() {
        let a = for_nic("uid-1", "net0");
        assert_eq!(a, for_nic("uid-1", "net0"));
        assert_ne!(a, for_nic("uid-1", "net1"));
        assert_ne!(a, for_nic("uid-2", "net0"));
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02);
        assert_eq!(a.len(), 17);
    }
}
