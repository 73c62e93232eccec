//! Multi-version concurrency control: revisions, the key index, the backend
//! layout, the key-value store and its image format.

pub mod backend;
pub mod image;
pub mod key_index;
pub mod kvstore;
pub mod revision;

pub use key_index::KeyRange;
pub use kvstore::{ApplyBatch, KvStore, LeaseChange, ReadView, RevisionEvents};
pub use revision::Revision;
