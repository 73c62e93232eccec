//! Quorum-loss recovery, the equivalent of `etcd --force-new-cluster`: rewrites a stopped
//! member's raft state so that it reopens as the only voter of a new cluster, keeping its data.
//!
//! The log file is first moved into the `raft_log` tree (the next open moves it back). What it then
//! does to the `raft_log` / `raft_meta` trees, in one sled transaction, then fsynced:
//! - appends one membership entry `{self}` right after the last log id (entry, purge point or
//!   snapshot), in a term above every term this member has seen, led by this member;
//! - saves a committed vote for that term by this member, and marks that entry committed;
//! - assigns a new random cluster id, so the old members, which still believe in the old
//!   membership, are refused by the cluster-id check of the peer transport (`network`).
//!
//! On the next `Node::open`, openraft re-applies the log up to the new entry (the membership
//! becomes the applied one) and, finding a committed vote for itself, starts as leader.
//!
//! **Every entry in this member's log becomes committed**, including a tail the old cluster may
//! never have committed (writes whose clients saw a timeout). Unlike etcd, which drops the entries
//! past its local commit index, we keep them: our persisted commit index is saved lazily and may
//! lag entries the old cluster did commit and acknowledge, so truncating could lose acknowledged
//! writes, while keeping an unacknowledged one is an outcome its client already had to allow.
//! Entries other members had and this one lacked are lost: recover the most up-to-date member.
//!
//! The old members must not be restarted with their data: they still form the old cluster (the
//! cluster-id check only keeps the two apart). Re-add them as new, empty members.
//!
//! Limitation: the state machine's applied position is not visible here (it lives with the
//! machine). If a crash interrupted installing a snapshot from the leader after the machine was
//! restored but before the snapshot was recorded, the machine is ahead of the log: openraft purges
//! the new entry on open and the member comes back in the old membership under the new cluster id,
//! unable to commit but with nothing lost. That open completed openraft's cleanup, so stopping the
//! member and recovering it again then works.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload, Membership};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::error::ConsensusError;
use crate::log_store::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG_TREE, META_TREE};
use crate::node::{read_meta, KEY_CLUSTER_ID, KEY_MEMBER_ID, KEY_ORIGIN};
use crate::snapshot::{SnapshotRecord, KEY_SNAPSHOT, SNAPSHOT_DIR};
use crate::types::{
    decode, encode, Entry, LogId, MemberInfo, NodeId, SnapshotMeta, StoredMembership, Vote,
};

/// Any origin but "bootstrap" makes `Node::open` resume instead of initializing.
const ORIGIN_RECOVER: &[u8] = b"recover";

/// Outcome of [`force_new_cluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoverReport {
    /// This member's id (unchanged).
    pub member_id: NodeId,
    /// The cluster id the member belonged to.
    pub old_cluster_id: u64,
    /// The id of the new single-member cluster.
    pub new_cluster_id: u64,
    /// Index of the new membership entry, now the last log entry; everything before it is kept.
    pub last_log_index: u64,
    /// Members of the old membership (voters and learners) other than this one, with names.
    pub removed_members: Vec<(NodeId, String)>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ConsensusError {
    ConsensusError::Corrupt(format!("{what}: {e}"))
}

fn encoded<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, ConsensusError> {
    encode(value).map_err(|e| ConsensusError::Storage(format!("encode {what}: {e}")))
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, ConsensusError> {
    decode::<Entry>(value).map_err(|e| corrupt(&format!("log entry {key:02x?}"), e))
}

/// The later of two log positions; indexes decide (one member's history is linear).
fn later(a: Option<LogId>, b: Option<LogId>) -> Option<LogId> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if (y.index, y) > (x.index, x) { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn new_cluster_id(old: u64) -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 && id != old {
            return id;
        }
    }
}

/// Turns the stopped member stored in `db` (data directory `data_dir`) into the only voter of a
/// new cluster with a new id, keeping all its data; `info` becomes its membership entry.
///
/// Nothing else may use `db` meanwhile (no running `Node`). Safe to repeat: each run starts
/// another new cluster from the member's current state. See the module docs for what is lost
/// and what becomes committed.
pub fn force_new_cluster(
    db: &sled::Db,
    data_dir: &Path,
    info: MemberInfo,
) -> Result<RecoverReport, ConsensusError> {
    // The log is rewritten in sled, in one transaction with the metadata; the next open moves it
    // back into the log file.
    crate::log_store::export_log_to_tree(db, data_dir)?;
    let log = db.open_tree(LOG_TREE)?;
    let meta = db.open_tree(META_TREE)?;

    let Some(member_id) = read_meta::<u64>(&meta, KEY_MEMBER_ID)? else {
        return Err(ConsensusError::NotInitialized(
            "no member id in the raft metadata: this data directory never joined or started a cluster"
                .into(),
        ));
    };
    // `node` writes the member id last, so its presence implies the cluster id was written too.
    let old_cluster_id = read_meta::<u64>(&meta, KEY_CLUSTER_ID)?
        .ok_or_else(|| corrupt("cluster_id", "missing although the member id is set"))?;

    let vote = read_meta::<Vote>(&meta, KEY_VOTE)?;
    let purged = read_meta::<LogId>(&meta, KEY_LAST_PURGED)?;
    let snapshot = read_meta::<SnapshotRecord>(&meta, KEY_SNAPSHOT)?;
    let last_entry = match log.last()? {
        Some((key, value)) => Some(decode_entry(&key, &value)?.log_id),
        None => None,
    };
    let snapshot_last = snapshot.as_ref().and_then(|s| s.meta.last_log_id);
    // A snapshot installed from a leader is recorded before openraft purges the log it covers,
    // so after a crash in between the snapshot (not the log) holds the last log id.
    let last = later(later(last_entry, purged), snapshot_last).ok_or_else(|| {
        ConsensusError::NotInitialized(format!(
            "member {member_id:x} has neither raft log nor snapshot: there is no data to recover"
        ))
    })?;
    // Entries at or below the point the log must start after (stale leftovers of a purge, or a
    // log shorter than the snapshot): removed so the log is contiguous after the purge point.
    let purge_to = if last_entry.map(|l| l.index) == Some(last.index) {
        purged
    } else {
        Some(last)
    };

    if let Some(s) = &snapshot {
        if !data_dir.join(SNAPSHOT_DIR).join(&s.file).exists() {
            // Not fatal: openraft rebuilds a missing snapshot from the state machine on open.
            tracing::warn!(file = %s.file, "snapshot image is missing; it will be rebuilt");
        }
    }

    let old_membership = last_membership(&log, purge_to, snapshot.as_ref().map(|s| &s.meta))?;
    let old = old_membership.membership();
    if !old.voter_ids().any(|id| id == member_id) {
        // Allowed (it may be all that is left), but its data may trail the old voters'.
        tracing::warn!(
            member = %format!("{member_id:x}"),
            "recovering a member that was not a voter of the old membership"
        );
    }
    let removed_members: Vec<(NodeId, String)> = old
        .nodes()
        .filter(|(id, _)| **id != member_id)
        .map(|(id, node)| (*id, node.name.clone()))
        .collect();

    let vote_term = vote.map(|v| v.leader_id.term).unwrap_or(0);
    let term = vote_term
        .max(last.leader_id.term)
        .checked_add(1)
        .ok_or_else(|| corrupt("term", "at its maximum"))?;
    let index = last
        .index
        .checked_add(1)
        .ok_or_else(|| corrupt("log index", "at its maximum"))?;
    let log_id = LogId::new(CommittedLeaderId::new(term, member_id), index);
    let entry = Entry {
        log_id,
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([member_id])],
            BTreeMap::from([(member_id, info)]),
        )),
    };
    let new_cluster_id = new_cluster_id(old_cluster_id);

    let entry_bytes = encoded("membership entry", &entry)?;
    let vote_bytes = encoded("vote", &Vote::new_committed(term, member_id))?;
    let committed_bytes = encoded("committed", &log_id)?;
    let cluster_bytes = encoded("cluster id", &new_cluster_id)?;
    let new_purged = match purge_to {
        Some(p) if Some(p) != purged => Some(encoded("purge point", &p)?),
        _ => None,
    };
    let mut stale = Vec::new();
    if let Some(p) = purge_to {
        for item in log.range(..=p.index.to_be_bytes()) {
            stale.push(item?.0);
        }
    }

    // One transaction: a crash must not leave the one-voter membership under the old cluster
    // id, or the member would lead alone while still talking raft with the old members.
    let written: Result<(), TransactionError<()>> = (&log, &meta).transaction(|(log, meta)| {
        if let Some(purged_bytes) = &new_purged {
            meta.insert(KEY_LAST_PURGED, purged_bytes.as_slice())?;
        }
        for key in &stale {
            log.remove(key)?;
        }
        log.insert(&index.to_be_bytes()[..], entry_bytes.as_slice())?;
        meta.insert(KEY_VOTE, vote_bytes.as_slice())?;
        // Committed up front: the entry is durable on the only voter, and it makes `Node::open`
        // apply the whole old log and the new membership before raft starts.
        meta.insert(KEY_COMMITTED, committed_bytes.as_slice())?;
        meta.insert(KEY_CLUSTER_ID, cluster_bytes.as_slice())?;
        meta.insert(KEY_ORIGIN, ORIGIN_RECOVER)?;
        Ok::<(), ConflictableTransactionError<()>>(())
    });
    written.map_err(|e| match e {
        TransactionError::Storage(e) => ConsensusError::from(e),
        TransactionError::Abort(()) => {
            ConsensusError::Storage("recovery transaction aborted".into())
        }
    })?;
    db.flush()?;

    tracing::warn!(
        member = %format!("{member_id:x}"),
        old_cluster = %format!("{old_cluster_id:x}"),
        new_cluster = %format!("{new_cluster_id:x}"),
        term,
        index,
        removed = removed_members.len(),
        "forced a new single-member cluster"
    );
    Ok(RecoverReport {
        member_id,
        old_cluster_id,
        new_cluster_id,
        last_log_index: index,
        removed_members,
    })
}

/// The membership in effect at the end of the log: the last membership entry after `purged`,
/// or else the one recorded with the snapshot (the empty membership if there is neither).
fn last_membership(
    log: &sled::Tree,
    purged: Option<LogId>,
    snapshot: Option<&SnapshotMeta>,
) -> Result<StoredMembership, ConsensusError> {
    let from_snapshot = snapshot.map(|m| m.last_membership.clone());
    let snapshot_at = from_snapshot.as_ref().and_then(|m| *m.log_id());
    let start = purged.map(|p| p.index.saturating_add(1)).unwrap_or(0);
    for item in log.range(start.to_be_bytes()..).rev() {
        let (key, value) = item?;
        let entry = decode_entry(&key, &value)?;
        if snapshot_at.is_some_and(|s| entry.log_id.index <= s.index) {
            break;
        }
        if let EntryPayload::Membership(m) = entry.payload {
            return Ok(StoredMembership::new(Some(entry.log_id), m));
        }
    }
    Ok(from_snapshot.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records a snapshot at `last` as `snapshot` does.
    fn write_snapshot_record(meta: &sled::Tree, last: LogId, membership: StoredMembership) {
        let record = SnapshotRecord {
            meta: SnapshotMeta {
                last_log_id: Some(last),
                last_membership: membership,
                snapshot_id: "s".into(),
            },
            file: "s.snap".into(),
        };
        meta.insert(KEY_SNAPSHOT, encode(&record).unwrap()).unwrap();
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn info(name: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            ..MemberInfo::default()
        }
    }

    /// A member whose log is shorter than its snapshot (crash after installing a snapshot from
    /// the leader, before the purge): the new entry goes after the snapshot and the log restarts
    /// there, as openraft itself would clean it up.
    #[test]
    fn log_behind_snapshot_restarts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let log = db.open_tree(LOG_TREE).unwrap();
        let meta = db.open_tree(META_TREE).unwrap();
        meta.insert(KEY_MEMBER_ID, encode(&7u64).unwrap()).unwrap();
        meta.insert(KEY_CLUSTER_ID, encode(&99u64).unwrap())
            .unwrap();
        meta.insert(KEY_VOTE, encode(&Vote::new_committed(4, 1)).unwrap())
            .unwrap();
        meta.insert(KEY_LAST_PURGED, encode(&log_id(2, 3)).unwrap())
            .unwrap();
        for index in 4..=6 {
            let entry = Entry {
                log_id: log_id(2, index),
                payload: EntryPayload::Blank,
            };
            log.insert(index.to_be_bytes(), encode(&entry).unwrap())
                .unwrap();
        }
        let old = Membership::new(
            vec![BTreeSet::from([1, 7])],
            BTreeMap::from([(1, info("one")), (7, info("seven"))]),
        );
        write_snapshot_record(
            &meta,
            log_id(3, 10),
            StoredMembership::new(Some(log_id(2, 2)), old),
        );

        let report = force_new_cluster(&db, dir.path(), info("seven")).unwrap();
        assert_eq!(report.member_id, 7);
        assert_eq!(report.old_cluster_id, 99);
        assert_eq!(report.last_log_index, 11);
        assert_eq!(report.removed_members, vec![(1, "one".to_string())]);

        let keys: Vec<u64> = log
            .iter()
            .map(|kv| u64::from_be_bytes(kv.unwrap().0.as_ref().try_into().unwrap()))
            .collect();
        assert_eq!(keys, vec![11], "stale entries below the snapshot are gone");
        let entry: Entry = decode(&log.get(11u64.to_be_bytes()).unwrap().unwrap()).unwrap();
        // Term above both the vote's (4) and the last log id's (3).
        assert_eq!(entry.log_id, LogId::new(CommittedLeaderId::new(5, 7), 11));
        let EntryPayload::Membership(m) = entry.payload else {
            panic!("not a membership entry: {entry:?}");
        };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![7]);
        assert_eq!(m.get_node(&7), Some(&info("seven")));

        let get = |key| read_meta::<LogId>(&meta, key).unwrap();
        assert_eq!(get(KEY_LAST_PURGED), Some(log_id(3, 10)));
        assert_eq!(get(KEY_COMMITTED), Some(entry.log_id));
        let vote: Vote = read_meta(&meta, KEY_VOTE).unwrap().unwrap();
        assert_eq!(vote, Vote::new_committed(5, 7));
        let cluster: u64 = read_meta(&meta, KEY_CLUSTER_ID).unwrap().unwrap();
        assert_eq!(cluster, report.new_cluster_id);
        assert_eq!(
            meta.get(KEY_ORIGIN).unwrap().as_deref(),
            Some(ORIGIN_RECOVER)
        );
    }

    /// A member with ids but no log and no snapshot has nothing to recover.
    #[test]
    fn member_without_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let meta = db.open_tree(META_TREE).unwrap();
        meta.insert(KEY_MEMBER_ID, encode(&7u64).unwrap()).unwrap();
        meta.insert(KEY_CLUSTER_ID, encode(&99u64).unwrap())
            .unwrap();
        let err = force_new_cluster(&db, dir.path(), info("seven")).unwrap_err();
        assert!(matches!(err, ConsensusError::NotInitialized(_)), "{err}");
        assert_eq!(read_meta::<u64>(&meta, KEY_CLUSTER_ID).unwrap(), Some(99));
    }
}
