//! A thread of its own for raft. The core loop, the state machine worker and
//! log I/O sit on the critical path of every write; on the shared runtime
//! each of their hand-offs waits behind client request tasks, so under load
//! most of a write's latency was queueing. Here they never wait for clients.

use std::io;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A single-threaded tokio runtime driven by a dedicated OS thread.
pub(crate) struct RaftRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl RaftRuntime {
    /// Starts the thread and its runtime.
    pub(crate) fn start() -> io::Result<RaftRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                // Spawned tasks run while this waits; dropping the runtime
                // afterwards cancels whatever is left.
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(RaftRuntime {
            handle,
            stop: Some(stop),
        })
    }

    /// Where raft's tasks are spawned.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
