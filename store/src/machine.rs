//! The store as the consensus' state machine: decodes replicated commands,
//! applies a raft batch atomically and tells watchers and the lease clock.

use crate::apply::apply_command;
use crate::error::StoreError;
use crate::lease::LeaseClock;
use crate::mvcc::KvStore;
use crate::pb::raftcmd::{store_result::Result as Res, CommandError, StoreCommand, StoreResult};
use prost::Message;
use std::sync::Arc;
use tugboat_consensus::{StateMachine, StateMachineError};

/// Adapts [`KvStore`] to [`StateMachine`].
pub struct StoreMachine {
    kv: Arc<KvStore>,
    leases: Arc<LeaseClock>,
    min_lease_ttl: i64,
}

impl StoreMachine {
    /// A machine over `kv`, reporting lease changes to `leases`.
    pub fn new(kv: Arc<KvStore>, leases: Arc<LeaseClock>, min_lease_ttl: i64) -> Self {
        StoreMachine {
            kv,
            leases,
            min_lease_ttl,
        }
    }
}

fn sm_err(e: StoreError) -> StateMachineError {
    match e {
        StoreError::Corrupt(m) => StateMachineError::Corrupt(m),
        StoreError::Storage(m) => StateMachineError::Io(m),
        other => StateMachineError::Other(other.to_string()),
    }
}

impl StateMachine for StoreMachine {
    fn apply(
        &self,
        entries: &[Option<&[u8]>],
        applied: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut batch = self.kv.begin_apply().map_err(sm_err)?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(bytes) = entry else {
                out.push(Vec::new());
                continue;
            };
            let result = match StoreCommand::decode(*bytes) {
                Ok(cmd) => apply_command(&mut batch, cmd, self.min_lease_ttl),
                // Only this member proposes commands, so this means a bug or a
                // damaged log; answer the proposer instead of stopping every replica.
                Err(e) => StoreResult {
                    result: Some(Res::Error(CommandError {
                        code: tonic::Code::Internal as i32,
                        message: format!("etcdserver: undecodable command: {e}"),
                    })),
                },
            };
            if let Some(Res::Error(e)) = &result.result {
                if e.code == tonic::Code::Internal as i32 {
                    tracing::error!(error = %e.message, "replicated command failed");
                }
            }
            out.push(result.encode_to_vec());
        }
        let (_events, lease_changes) = batch.commit(applied).map_err(sm_err)?;
        if !lease_changes.is_empty() {
            self.leases.on_applied(&lease_changes);
        }
        Ok(out)
    }

    fn applied_record(&self) -> Result<Option<Vec<u8>>, StateMachineError> {
        self.kv.applied_record().map_err(sm_err)
    }

    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), StateMachineError> {
        self.kv.write_image(out).map_err(sm_err)
    }

    fn restore_snapshot(&self, input: &mut dyn std::io::Read) -> Result<(), StateMachineError> {
        self.kv.restore_image(input).map_err(sm_err)?;
        let st = self.kv.read().map_err(sm_err)?;
        self.leases
            .promote(st.leases.iter().map(|(id, l)| (*id, l.ttl)));
        Ok(())
    }
}
