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

/// Decodes a value written by [`encode`]; trailing bytes are rejected as corruption.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| DecodeError(e.to_string()))?;
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
