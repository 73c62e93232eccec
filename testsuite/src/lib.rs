//! Tugboat's test harness: process management for `tugboatd` and Debian's etcd, and an `etcdctl` runner.
//!
//! Integration tests live in `tests/`; see `harness` for the API they use.

pub mod harness;
pub mod kube;
pub mod load;
pub mod netns;
pub mod procstat;
pub mod session;
pub mod vmassets;
pub mod vmtest;

pub use harness::*;
pub mod linearizability;
