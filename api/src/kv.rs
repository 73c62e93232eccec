//! etcd client.
