//! The apiserver: every Tugboat kind behind a Kubernetes-shaped REST API.
//!
//! Layering (top to bottom): `http` (routing, negotiation, tables, watch streams) →
//! `auth` (authentication, RBAC, audit) → `storage` (objects as JSON in etcd keys, watch cache) →
//! `kv` (the etcd v3 client: in-process to the local member or gRPC to any etcd).
//! `kinds` holds the typed resources, their defaults, validation, schemas and table columns;
//! `registry` is the table of kinds every other layer consults.

#![warn(missing_docs)]

pub mod auth;
pub mod discovery;
pub mod error;
pub mod kinds;
pub mod kv;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registries;
pub mod registry;
pub mod selector;
pub mod storage;

pub use error::ApiError;
pub use registry::{Registry, ResourceDef};
pub mod apiserver;
pub mod http;
