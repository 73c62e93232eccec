//! Tugboat's control-plane components, written against the apiserver with kube-rs (no back
//! door into the store):
//!
//! - [`leader`]: `coordination.k8s.io/v1` Lease leader election, so exactly one instance of a
//!   component is active per cluster;
//! - [`scheduler`]: binds unscheduled Ships to Nodes (filters, scores, binding with a
//!   `binding` subresource that refuses a bound Ship, `FailedScheduling` Events);
//! - [`replicaset`]: keeps each ReplicaSet's number of Ships (creates, deletes the surplus,
//!   adopts and releases by selector, reports status);
//! - [`namespace`]: a `default` ServiceAccount and token Secret in every namespace, and the
//!   backstop that finishes Terminating namespaces left unfinished;
//! - [`networkclass`]: `status.readyNodes` of NetworkClasses and ClusterNetworkClasses from the
//!   Nodes' CNI plugin readiness;
//! - [`nodelifecycle`]: Nodes whose Lease stops being renewed turn `Ready=Unknown` and tainted,
//!   their Ships Failed after an eviction timeout;
//! - [`gc`]: deletes dependents whose owner is gone and finishes stuck foreground deletions;
//! - [`deployment`]: rolls Deployments through ReplicaSets (RollingUpdate, Recreate, revisions,
//!   history limit, status and conditions as `kubectl rollout` expects);
//! - [`fleet`]: one ReplicaSet per Fleet component, all on the Fleet's network.

#![warn(missing_docs)]

pub mod deployment;
pub mod fleet;
pub mod gc;
pub mod leader;
pub mod namespace;
pub mod networkclass;
pub mod nodelifecycle;
pub mod replicaset;
pub mod scheduler;

/// Drops what no controller reads from cached objects (`managedFields`, often the largest
/// part of an object), so every controller's cache of 10,000 Ships stays small.
pub(crate) fn lean<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Retry delay after the `failures`-th consecutive failure: doubling from `initial`, at most
/// `max`.
pub(crate) fn backoff(
    initial: std::time::Duration,
    max: std::time::Duration,
    failures: u32,
) -> std::time::Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    initial.saturating_mul(factor).min(max)
}
