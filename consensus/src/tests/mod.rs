//! In-crate tests of the storage layers (they need crate-private types).

mod durability;
mod suite;

use std::sync::Mutex;

use crate::error::StateMachineError;
use crate::state_machine::StateMachine;
use crate::types::{decode, encode};

/// Applied record and applied commands.
type MemState = (Option<Vec<u8>>, Vec<Vec<u8>>);

/// In-memory state machine: records commands, answers with the command reversed.
#[derive(Default)]
pub(crate) struct MemMachine {
    state: Mutex<MemState>,
}

impl StateMachine for MemMachine {
    fn apply(
        &self,
        entries: &[Option<&[u8]>],
        applied: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut state = self.state.lock().unwrap();
        let mut out = Vec::new();
        for entry in entries {
            match entry {
                Some(cmd) => {
                    state.1.push(cmd.to_vec());
                    out.push(cmd.iter().rev().copied().collect());
                }
                None => out.push(Vec::new()),
            }
        }
        state.0 = Some(applied.to_vec());
        Ok(out)
    }

    fn applied_record(&self) -> Result<Option<Vec<u8>>, StateMachineError> {
        Ok(self.state.lock().unwrap().0.clone())
    }

    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), StateMachineError> {
        let state = self.state.lock().unwrap();
        let bytes = encode(&*state).map_err(|e| StateMachineError::Other(e.to_string()))?;
        out.write_all(&bytes)?;
        Ok(())
    }

    fn restore_snapshot(&self, input: &mut dyn std::io::Read) -> Result<(), StateMachineError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let restored = decode(&bytes).map_err(|e| StateMachineError::Corrupt(e.to_string()))?;
        *self.state.lock().unwrap() = restored;
        Ok(())
    }
}
