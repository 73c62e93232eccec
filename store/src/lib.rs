//! The store: an MVCC key-value state machine with leases and watches,
//! replicated through `tugboat-consensus`, served as the etcd v3 gRPC facade.

/// Generated etcd v3 wire types, clients and servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    /// mvccpb: KeyValue and Event.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// authpb: auth records (auth itself is not implemented).
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    /// etcdserverpb: the services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// Tugboat's replicated command envelope.
    pub mod raftcmd {
        tonic::include_proto!("tugboatraft");
    }
}

pub mod error;
pub mod mvcc;

pub use error::StoreError;
pub mod apply;
pub mod lease;
pub mod machine;
pub mod server;
pub mod validate;

pub use server::{services, EtcdServer, EtcdServices, ServerConfig};
