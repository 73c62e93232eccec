//! Small client-side helpers shared by the fault and durability tests.

use std::path::Path;

use tonic::transport::Channel;
use tugboat_store::pb::etcdserverpb::{kv_client::KvClient, RangeRequest};
use tugboat_store::pb::mvccpb::KeyValue;

use super::client::{connect, prefix_end, Target};
use super::LoadError;

/// Responses above tonic's 4 MiB default are legal for etcd (it allows ~2 GiB).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// One HTTP/2 connection to a plaintext endpoint.
pub async fn plain_channel(endpoint: &str) -> Result<Channel, LoadError> {
    let mut chans = connect(&Target::plain(endpoint), 1).await?;
    chans
        .pop()
        .ok_or_else(|| LoadError::Config("no channel was opened".into()))
}

/// A KV client over `channel` that accepts large range responses.
pub fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

/// Every key under `prefix` at the newest revision, paging so no response gets large,
/// together with the header revision of the first page.
pub async fn fetch_prefix(
    kv: &mut KvClient<Channel>,
    prefix: &[u8],
) -> Result<(i64, Vec<KeyValue>), tonic::Status> {
    const PAGE: i64 = 1000;
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    let mut out = Vec::new();
    let mut revision = 0;
    loop {
        let resp = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                // Pin later pages to the first page's revision so the listing is one snapshot.
                revision,
                ..Default::default()
            })
            .await?
            .into_inner();
        if revision == 0 {
            revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        }
        let more = resp.more;
        let Some(last) = resp.kvs.last() else { break };
        // Next page starts just after the last key returned.
        from = last.key.clone();
        from.push(0);
        out.extend(resp.kvs);
        if !more {
            break;
        }
    }
    Ok((revision, out))
}

/// Disk usage of a directory tree like `du`: (allocated bytes, apparent bytes).
///
/// Files that vanish during the walk (compaction, WAL purge) are skipped.
pub fn dir_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0u64;
    let mut apparent = 0u64;
    let root = std::fs::symlink_metadata(path)?;
    if !root.is_dir() {
        return Ok((root.blocks() * 512, root.len()));
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    Ok((allocated, apparent))
}
