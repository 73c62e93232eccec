//! The openraft type configuration and the small value types shared by the crate.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Raft member id (random nonzero, etcd-style).
pub type NodeId = u64;

/// Address book entry of a member, stored in raft membership (openraft `Node` type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Human-readable member name (etcd `--name`).
    pub name: String,
    /// URL peers use to reach this member's raft transport.
    pub peer_url: String,
    /// URLs clients use to reach this member's etcd API.
    pub client_urls: Vec<String>,
}

/// An opaque command replicated through the log (also used for state machine responses).
///
/// Serialized as a byte string (not a sequence of u8) so bincode copies it in one go.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Command(pub Vec<u8>);

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Command, E> {
                Ok(Command(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Command, E> {
                Ok(Command(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Command(out))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// The openraft type configuration of tugboat.
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq, Ord, PartialOrd)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = Command;
    type R = Command;
    type NodeId = NodeId;
    type Node = MemberInfo;
    type Entry = openraft::Entry<TypeConfig>;
    type SnapshotData = tokio::fs::File;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<TypeConfig>;
}

/// A raft log entry of tugboat.
pub type Entry = openraft::Entry<TypeConfig>;
/// A raft log id of tugboat.
pub type LogId = openraft::LogId<NodeId>;
/// A raft vote of tugboat.
pub type Vote = openraft::Vote<NodeId>;
/// A membership config together with the log id that carried it.
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberInfo>;
/// Metadata of a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberInfo>;
/// An openraft storage error of tugboat.
pub type StorageError = openraft::StorageError<NodeId>;
/// The openraft handle of tugboat.
pub type Raft = openraft::Raft<TypeConfig>;

/// Encodes a value with the crate's on-disk and on-wire codec (bincode 2, standard config).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

/// Most memory one decoded value may claim. Peers and the disk control the length prefixes: a
/// few bytes claiming a terabyte must be an error, not an allocation that aborts the process.
/// (Above the peer message limit, with room for decoded values being larger than encoded.)
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

/// Decodes a value written by [`encode`]; trailing bytes are rejected as corruption.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// A value could not be decoded (corrupt disk data or a peer speaking another format).
#[derive(Debug, thiserror::Error)]
#[error("decode: {0}")]
pub struct DecodeError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        // A varint length of 2^40 (0xFD + u64) with no payload behind it.
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Command>(&bytes).is_err());
        assert!(decode::<Vec<(u64, String)>>(&bytes).is_err());
        let mut request = vec![0x00];
        request.extend_from_slice(&bytes);
        assert!(decode::<crate::forward::ForwardRequest>(&request).is_err());
        // Ordinary values still round-trip.
        let cmd = Command(vec![7; 1000]);
        assert_eq!(decode::<Command>(&encode(&cmd).unwrap()).unwrap(), cmd);
    }
}
