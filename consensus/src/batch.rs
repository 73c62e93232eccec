//! Proposal batching. openraft 0.9 appends (and fsyncs) one client write at
//! a time and waits for the flush before taking the next, so concurrent
//! proposals are packed into one log entry instead: while one entry is in
//! flight the next batch accumulates, and every batch costs one fsync.

use crate::error::ProposeError;
use crate::types::{Command, Raft};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most commands packed into one log entry.
pub(crate) const MAX_BATCH_COMMANDS: usize = 512;
/// Most command bytes packed into one log entry.
pub(crate) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Entries in flight at once: one being appended while the previous one applies.
const IN_FLIGHT: usize = 2;
/// Longest wait for the previous entry's fsync before a batch is sent anyway.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

const BATCH_MAGIC: u8 = 0xB1;

/// A malformed batch payload (a damaged log or a bug).
#[derive(Debug, thiserror::Error)]
#[error("malformed command batch: {0}")]
pub struct BatchError(&'static str);

/// Frames `items` as one payload: magic, count, then length-prefixed items.
pub(crate) fn encode<'a>(items: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + items.len() * 8);
    out.push(BATCH_MAGIC);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// Splits a payload made by [`encode`].
pub(crate) fn decode(payload: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
    let (&magic, mut rest) = payload.split_first().ok_or(BatchError("empty"))?;
    if magic != BATCH_MAGIC {
        return Err(BatchError("bad magic"));
    }
    let mut take = |n: usize| -> Result<&[u8], BatchError> {
        if rest.len() < n {
            return Err(BatchError("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| BatchError("count"))?) as usize;
    // Each item needs at least its 4-byte length: bounds the allocation by the input size.
    if count > payload.len() / 4 {
        return Err(BatchError("count larger than payload"));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let len =
            u32::from_be_bytes(take(4)?.try_into().map_err(|_| BatchError("length"))?) as usize;
        items.push(take(len)?);
    }
    if !rest.is_empty() {
        return Err(BatchError("trailing bytes"));
    }
    Ok(items)
}

/// One command waiting to be replicated.
pub(crate) struct Proposal {
    pub(crate) cmd: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<(u64, Vec<u8>), ProposeError>>,
}

/// Collects proposals into batches and writes them through raft until the channel closes.
pub(crate) async fn run_batcher(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    mut flushed: tokio::sync::watch::Receiver<u64>,
    to_error: fn(
        &openraft::error::RaftError<
            crate::NodeId,
            openraft::error::ClientWriteError<crate::NodeId, crate::MemberInfo>,
        >,
    ) -> ProposeError,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // Flush count when the last entry was sent; its own flush makes the count pass it.
    let mut last_sent: Option<u64> = None;
    loop {
        // Wait for a slot first: proposals arriving meanwhile join the next batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        // With an entry in flight, send the next one only once that entry is
        // durable: openraft appends it right away then (while the previous one
        // applies), and everything that arrived meanwhile rides along instead
        // of trailing behind in an entry of its own.
        if let Some(sent) = last_sent {
            let _ = tokio::time::timeout(FLUSH_WAIT, flushed.wait_for(|n| *n > sent)).await;
        }
        let mut bytes = first.cmd.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let payload = encode(batch.iter().map(|p| p.cmd.as_slice()));
        last_sent = Some(*flushed.borrow());
        let replies: Vec<_> = batch.into_iter().map(|p| p.reply).collect();
        let raft = raft.clone();
        tokio::spawn(async move {
            let result = raft.client_write(Command(payload)).await;
            drop(permit);
            match result {
                Ok(resp) => match decode(&resp.data.0) {
                    Ok(items) if items.len() == replies.len() => {
                        let index = resp.log_id.index;
                        for (reply, item) in replies.into_iter().zip(items) {
                            let _ = reply.send(Ok((index, item.to_vec())));
                        }
                    }
                    Ok(_) | Err(_) => {
                        for reply in replies {
                            let _ = reply.send(Err(ProposeError::Fatal(
                                "state machine answered a batch with the wrong number of responses"
                                    .into(),
                            )));
                        }
                    }
                },
                Err(e) => {
                    let err = to_error(&e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let items: Vec<&[u8]> = vec![b"a", b"", b"ccc"];
        let enc = encode(items.iter().copied());
        assert_eq!(decode(&enc).unwrap(), items);
        assert!(decode(&enc[..enc.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
        assert!(
            decode(&[BATCH_MAGIC, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "huge count refused without allocating"
        );
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
    }
}
