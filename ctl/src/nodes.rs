//! `tugboat node list|remove`: every member with its role, addresses, health
//! and raft position, as each member reports it itself, plus the workers;
//! removing a member goes through the leader (MemberRemove).

use crate::local::{admin_channel, admin_channel_to, member_list, prefix_range};
use anyhow::Context;
use std::path::Path;
use tugboat_store::pb::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
    DeleteRangeRequest, MemberRemoveRequest, StatusRequest,
};

/// One row of `tugboat node list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Member name.
    pub name: String,
    /// `voter`, `standby` (raft learner) or `worker`.
    pub role: &'static str,
    /// Whether this member leads.
    pub leader: bool,
    /// Peer URL.
    pub peer_url: String,
    /// First client URL.
    pub client_url: String,
    /// `healthy`, or why the member could not be asked.
    pub health: String,
    /// Committed and applied raft indexes the member reports.
    pub raft: Option<(u64, u64)>,
}

/// Lists the members, asking each one for its status.
pub async fn list(data_dir: &Path) -> anyhow::Result<Vec<NodeRow>> {
    let (_, channel) = admin_channel(data_dir).await?;
    let mut rows = Vec::new();
    for m in member_list(&channel).await? {
        let client_url = m.client_ur_ls.first().cloned().unwrap_or_default();
        let status = match admin_channel_to(data_dir, &client_url).await {
            Ok(ch) => MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.message().to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        let (health, raft, leader) = match &status {
            Ok(s) if s.leader == 0 => (
                "no leader".to_string(),
                Some((s.raft_index, s.raft_applied_index)),
                false,
            ),
            Ok(s) => (
                "healthy".to_string(),
                Some((s.raft_index, s.raft_applied_index)),
                s.leader == m.id,
            ),
            Err(e) => (format!("unreachable: {e}"), None, false),
        };
        rows.push(NodeRow {
            name: m.name,
            role: if m.is_learner { "standby" } else { "voter" },
            leader,
            peer_url: m.peer_ur_ls.first().cloned().unwrap_or_default(),
            client_url,
            health,
            raft,
        });
    }
    rows.extend(workers(&channel).await?);
    Ok(rows)
}

/// Registered workers, healthy while their heartbeat lease lives.
async fn workers(channel: &tonic::transport::Channel) -> anyhow::Result<Vec<NodeRow>> {
    use crate::join::server::{WorkerRecord, WORKER_KEY_PREFIX};
    use crate::worker::HEARTBEAT_KEY_PREFIX;
    let mut kv = KvClient::new(channel.clone());
    let records = kv
        .range(prefix_range(WORKER_KEY_PREFIX))
        .await
        .context("listing workers")?
        .into_inner()
        .kvs;
    let beats: std::collections::BTreeSet<Vec<u8>> = kv
        .range(prefix_range(HEARTBEAT_KEY_PREFIX))
        .await
        .context("listing worker heartbeats")?
        .into_inner()
        .kvs
        .into_iter()
        .filter_map(|kv| {
            kv.key
                .strip_prefix(HEARTBEAT_KEY_PREFIX.as_bytes())
                .map(<[u8]>::to_vec)
        })
        .collect();
    let mut rows = Vec::new();
    for kv in records {
        let Ok(w) = serde_json::from_slice::<WorkerRecord>(&kv.value) else {
            continue;
        };
        let alive = beats.contains(w.name.as_bytes());
        rows.push(NodeRow {
            name: w.name,
            role: "worker",
            leader: false,
            peer_url: "-".into(),
            client_url: "-".into(),
            health: if alive { "healthy" } else { "no heartbeat" }.into(),
            raft: None,
        });
    }
    Ok(rows)
}

/// Removes the member or worker called `name`.
pub async fn remove(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let (_, channel) = admin_channel(data_dir).await?;
    if let Some(m) = member_list(&channel)
        .await?
        .into_iter()
        .find(|m| m.name == name)
    {
        ClusterClient::new(channel)
            .member_remove(MemberRemoveRequest { id: m.id })
            .await
            .map_err(|s| anyhow::anyhow!("removing {name}: {}", s.message()))?;
        return Ok(format!("removed member {name} ({:x})", m.id));
    }
    let key = format!("{}{name}", crate::join::server::WORKER_KEY_PREFIX);
    let deleted = KvClient::new(channel)
        .delete_range(DeleteRangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        })
        .await
        .context("removing the worker record")?
        .into_inner()
        .deleted;
    if deleted == 0 {
        anyhow::bail!("no member or worker is called {name:?}");
    }
    Ok(format!("removed worker {name}"))
}

/// A table of members for humans.
pub fn render(rows: &[NodeRow]) -> String {
    let mut out = format!(
        "{:<16} {:<14} {:<26} {:<26} {:<10} {}\n",
        "NAME", "ROLE", "PEER", "CLIENT", "RAFT", "HEALTH"
    );
    for r in rows {
        let role = if r.leader {
            format!("{} (leader)", r.role)
        } else {
            r.role.to_string()
        };
        let raft = r.raft.map_or("-".to_string(), |(c, a)| format!("{c}/{a}"));
        out.push_str(&format!(
            "{:<16} {:<14} {:<26} {:<26} {:<10} {}\n",
            r.name, role, r.peer_url, r.client_url, raft, r.health
        ));
    }
    out
}
