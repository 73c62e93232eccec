//! Assembly of the `tugboatd` daemon: flags, PKI, storage, consensus, the
//! etcd facade and its listeners. The logic lives in the library crates;
//! this crate wires them together.

pub mod agentserver;
pub mod authority;
pub mod control;
pub mod daemon;
pub mod hostruntime;
pub mod images;
pub mod join;
pub mod kubeconfig;
pub mod listen;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod nodes;
pub mod shipctl;
pub mod token;
pub mod worker;
