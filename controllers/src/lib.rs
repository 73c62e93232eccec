//! Tugboat's control-plane components, written against the apiserver with kube-rs (no back
//! door into the store):
//!
//! - [`leader`]: `coordination.k8s.io/v1` Lease leader election, so exactly one instance of a
//!   component is active per cluster;
//! - [`scheduler`]: binds unscheduled Ships to Nodes (filters, scores, binding with a
//!   resourceVersion precondition, `FailedScheduling` Events);
//! - [`replicaset`]: keeps each ReplicaSet's number of Ships (creates, deletes the surplus,
//!   adopts and releases by selector, reports status).

#![warn(missing_docs)]

pub mod leader;
pub mod replicaset;
pub mod scheduler;
