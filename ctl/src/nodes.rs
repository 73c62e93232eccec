//! `tugboat node list`: every member with its role, addresses, health and
//! raft position, as each member reports it itself.

use crate::local::{admin_channel, admin_channel_to};
use anyhow::Context;
use std::path::Path;
use tugboat_store::pb::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, MemberListRequest,
    StatusRequest,
};

/// One row of `tugboat node list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Member name.
    pub name: String,
    /// `voter`, `standby` (raft learner) or, later, `worker`.
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
    let resp = ClusterClient::new(channel)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .context("listing members")?
        .into_inner();
    let mut rows = Vec::new();
    for m in resp.members {
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
    Ok(rows)
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
