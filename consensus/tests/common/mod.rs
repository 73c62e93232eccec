//! Test support: a sled-backed state machine and in-process members on loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tugboat_consensus::{Bootstrap, MemberInfo, Node, NodeConfig, StateMachine, StateMachineError};

const APPLIED_KEY: &[u8] = b"applied";
const CMD_PREFIX: u8 = b'c';

/// State machine keeping every command in one sled tree (commands keyed by sequence number,
/// plus the applied record), applied atomically per batch.
pub struct SledMachine {
    tree: sled::Tree,
    /// Commands applied by this instance (to observe re-application after restart).
    pub applied_here: Mutex<Vec<Vec<u8>>>,
    /// When false, apply answers but persists nothing (simulates writes lost in a crash).
    pub persist: AtomicBool,
}

impl SledMachine {
    pub fn open(db: &sled::Db) -> Arc<SledMachine> {
        Arc::new(SledMachine {
            tree: db.open_tree("test_sm").unwrap(),
            applied_here: Mutex::new(Vec::new()),
            persist: AtomicBool::new(true),
        })
    }

    /// All persisted commands in apply order.
    pub fn commands(&self) -> Vec<Vec<u8>> {
        self.tree
            .scan_prefix([CMD_PREFIX])
            .map(|kv| kv.unwrap().1.to_vec())
            .collect()
    }

    fn next_seq(&self) -> u64 {
        match self.tree.scan_prefix([CMD_PREFIX]).next_back() {
            Some(kv) => u64::from_be_bytes(kv.unwrap().0[1..9].try_into().unwrap()) + 1,
            None => 0,
        }
    }
}

fn cmd_key(seq: u64) -> Vec<u8> {
    let mut key = vec![CMD_PREFIX];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl StateMachine for SledMachine {
    fn apply(
        &self,
        entries: &[Option<&[u8]>],
        applied: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateMachineError> {
        let mut batch = sled::Batch::default();
        let mut seq = self.next_seq();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Some(cmd) => {
                    batch.insert(cmd_key(seq), *cmd);
                    seq += 1;
                    self.applied_here.lock().unwrap().push(cmd.to_vec());
                    out.push(cmd.iter().rev().copied().collect());
                }
                None => out.push(Vec::new()),
            }
        }
        batch.insert(APPLIED_KEY, applied);
        if self.persist.load(Ordering::SeqCst) {
            self.tree.apply_batch(batch)?;
        }
        Ok(out)
    }

    fn applied_record(&self) -> Result<Option<Vec<u8>>, StateMachineError> {
        Ok(self.tree.get(APPLIED_KEY)?.map(|v| v.to_vec()))
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            out.write_all(&(k.len() as u32).to_be_bytes())?;
            out.write_all(&k)?;
            out.write_all(&(v.len() as u32).to_be_bytes())?;
            out.write_all(&v)?;
        }
        Ok(())
    }

    fn restore_snapshot(&self, input: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut data = Vec::new();
        input.read_to_end(&mut data)?;
        let mut batch = sled::Batch::default();
        for kv in self.tree.iter() {
            batch.remove(kv?.0);
        }
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<Vec<u8>, StateMachineError> {
            let end = pos.checked_add(n).filter(|e| *e <= data.len());
            let end = end.ok_or_else(|| StateMachineError::Corrupt("truncated image".into()))?;
            let chunk = data[pos..end].to_vec();
            pos = end;
            Ok(chunk)
        };
        while let Ok(len) = take(4) {
            let k = take(u32::from_be_bytes(len.try_into().unwrap()) as usize)?;
            let vlen = take(4)?;
            let v = take(u32::from_be_bytes(vlen.try_into().unwrap()) as usize)?;
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// A member running in-process: node, its machine, its peer server on loopback.
pub struct Member {
    pub node: Node,
    pub sm: Arc<SledMachine>,
    pub db: sled::Db,
    pub dir: PathBuf,
    pub info: MemberInfo,
    pub addr: String,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

pub fn config(name: &str, dir: &Path, peer_url: &str, snapshot_every: u64) -> NodeConfig {
    let mut cfg = NodeConfig::new(name, dir, peer_url);
    cfg.client_urls = vec![format!("http://{name}.invalid:2379")];
    cfg.snapshot_every = snapshot_every;
    cfg
}

impl Member {
    /// Opens (or reopens) a member storing under `dir`, serving peers on a fresh loopback port.
    pub async fn start(
        name: &str,
        dir: &Path,
        bootstrap: Bootstrap,
        snapshot_every: u64,
    ) -> Member {
        Member::start_at(name, dir, bootstrap, snapshot_every, "127.0.0.1:0").await
    }

    /// Like `start`, serving peers on `addr` (to come back on the port recorded in membership).
    pub async fn start_at(
        name: &str,
        dir: &Path,
        bootstrap: Bootstrap,
        snapshot_every: u64,
        addr: &str,
    ) -> Member {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let local_addr = listener.local_addr().unwrap().to_string();
        let peer_url = format!("http://{local_addr}");
        let db = sled::open(dir.join("db")).unwrap();
        let sm = SledMachine::open(&db);
        let cfg = config(name, dir, &peer_url, snapshot_every);
        let info = MemberInfo {
            name: cfg.name.clone(),
            peer_url: cfg.peer_url.clone(),
            client_urls: cfg.client_urls.clone(),
        };
        let node = Node::open_with(cfg, db.clone(), sm.clone(), bootstrap)
            .await
            .unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = node.peer_service();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        Member {
            node,
            sm,
            db,
            dir: dir.to_path_buf(),
            info,
            addr: local_addr,
            stop_server: Some(stop_tx),
            server: Some(server),
        }
    }

    /// Shuts the node and its server down and releases the database.
    pub async fn stop(mut self) -> PathBuf {
        self.node.shutdown().await.unwrap();
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        self.dir.clone()
    }
}

/// Polls `cond` until it holds; panics after a generous bound so a broken cluster fails instead
/// of hanging the test run (this is a hang guard, not a timing assertion).
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Members keyed by id, for status checks.
pub fn by_id(members: &[&Member]) -> BTreeMap<u64, Node> {
    members
        .iter()
        .map(|m| (m.node.member_id(), m.node.clone()))
        .collect()
}
