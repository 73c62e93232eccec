//! The audit log: one JSON line per request, written by a background thread so that recording
//! never blocks a request (a full queue drops the event and counts it).

use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Events queued before [`AuditLog::record`] starts dropping.
pub const QUEUE_CAPACITY: usize = 8192;

/// One audited request. Serialized as a JSON line with these (camelCase) field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When the request was received (RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    pub ts: jiff::Timestamp,
    /// User name.
    pub user: String,
    /// User groups.
    pub groups: Vec<String>,
    /// Authorizer verb (`get`, `list`, `watch`, `create`, …, or the HTTP method for
    /// non-resource URLs).
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Request URI (path and query).
    pub uri: String,
    /// HTTP status code of the response.
    pub code: u16,
    /// Time to the response head, milliseconds.
    pub latency_ms: f64,
    /// Client address.
    pub source_ip: String,
    /// `User-Agent` header.
    pub user_agent: String,
}

fn rfc3339<S: serde::Serializer>(ts: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(ts)
}

/// A running audit log.
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<AuditEvent>>>,
    dropped: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating with mode 0600, appending) `path` and starts the writer thread.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(rx, BufWriter::new(file)))?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            dropped,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues `e`; never blocks. When the queue is full (or the log is closed) the event is
    /// dropped and counted in [`AuditLog::dropped`].
    pub fn record(&self, e: AuditEvent) {
        let sent = match self.tx.lock() {
            Ok(tx) => match tx.as_ref() {
                Some(tx) => match tx.try_send(e) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
                },
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "audit events dropped: the audit log cannot keep up"
                );
            }
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops accepting events, writes what is queued, flushes and waits for the writer.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("audit log writer panicked");
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(rx: Receiver<AuditEvent>, mut out: BufWriter<std::fs::File>) {
    let mut failing = false;
    let mut write = |out: &mut BufWriter<std::fs::File>, e: &AuditEvent| {
        let result = serde_json::to_writer(&mut *out, e)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        match result {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::error!(error = %err, "cannot write the audit log");
            }
            Err(_) => {}
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(e) => {
                write(&mut out, &e);
                // Drain what is already queued before flushing.
                while let Ok(e) = rx.try_recv() {
                    write(&mut out, &e);
                }
                if let Err(err) = out.flush() {
                    tracing::error!(error = %err, "cannot flush the audit log");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let ts: jiff::Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        log.record(AuditEvent {
            ts,
            user: "alice".into(),
            groups: vec!["system:authenticated".into()],
            verb: "get".into(),
            group: "".into(),
            resource: "ships".into(),
            subresource: "status".into(),
            namespace: "default".into(),
            name: "s1".into(),
            uri: "/api/v1/namespaces/default/ships/s1/status".into(),
            code: 200,
            latency_ms: 1.5,
            source_ip: "127.0.0.1:5555".into(),
            user_agent: "kubectl/v1.32.0".into(),
        });
        log.record(AuditEvent {
            ts,
            user: "system:anonymous".into(),
            code: 403,
            ..AuditEvent::default()
        });
        log.close();
        assert_eq!(log.dropped(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            json!({"ts": "2024-05-01T10:00:00Z", "user": "alice", "groups": ["system:authenticated"],
                "verb": "get", "group": "", "resource": "ships", "subresource": "status",
                "namespace": "default", "name": "s1",
                "uri": "/api/v1/namespaces/default/ships/s1/status", "code": 200,
                "latencyMs": 1.5, "sourceIp": "127.0.0.1:5555", "userAgent": "kubectl/v1.32.0"})
        );
        assert_eq!(lines[1]["code"], 403);
        // After close, events are dropped and counted, not blocking.
        log.record(AuditEvent::default());
        assert_eq!(log.dropped(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
