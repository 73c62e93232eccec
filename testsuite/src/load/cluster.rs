//! Cluster-level timings for the benchmarks: how long a leader failure stops
//! writes, and how long a joining member takes to become a voter.
//!
//! Both work the same against Tugboat and etcd: they only use the etcd v3
//! `KV/Put`, `Maintenance/Status` and `Cluster/MemberList`/`MemberPromote` calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tonic::transport::Channel;
use tugboat_store::pb::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
    Member, MemberListRequest, MemberPromoteRequest, PutRequest, StatusRequest,
};

use super::client::{connect, Target};
use super::keys::{filler, KeyShape};
use super::ops::call;
use super::LoadError;

/// Error messages kept verbatim in a report.
const KEPT_ERRORS: usize = 5;

/// How often the status of the probed member is polled after the kill.
const STATUS_POLL: Duration = Duration::from_millis(10);

/// A leader-failure measurement: writes to a follower, SIGKILL of the leader.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Plaintext or TLS endpoint of a follower that stays up.
    pub target: Target,
    /// Process to kill with SIGKILL once writes flow (the leader's pid).
    pub kill_pid: i32,
    /// How long writes run before the kill.
    pub warmup: Duration,
    /// A new put is sent this often, whether or not earlier ones were answered
    /// (open loop, so one put stuck at the dead leader does not stall the probe).
    pub interval: Duration,
    /// Deadline of each put.
    pub request_timeout: Duration,
    /// Give up when writes or the new leader have not appeared this long after the kill.
    pub max_wait: Duration,
    /// Writes keep going this long after both were seen (to see that they keep working).
    pub tail: Duration,
    /// Key length in bytes.
    pub key_size: usize,
    /// Value length in bytes.
    pub val_size: usize,
    /// Key prefix of the probe's writes.
    pub prefix: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            target: Target::plain("http://127.0.0.1:2379"),
            kill_pid: 0,
            warmup: Duration::from_secs(1),
            interval: Duration::from_millis(5),
            request_timeout: Duration::from_secs(10),
            max_wait: Duration::from_secs(30),
            tail: Duration::from_millis(300),
            key_size: 16,
            val_size: 256,
            prefix: "fo/".to_string(),
        }
    }
}

/// What a failover probe saw; times in milliseconds after the kill.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The member written to.
    pub endpoint: String,
    /// The process that was killed.
    pub killed_pid: i32,
    /// Member id (hex) of the probed member.
    pub member: String,
    /// Leader (hex) before the kill, as the probed member reported it.
    pub old_leader: String,
    /// Leader (hex) after the kill, if one was reported in time.
    pub new_leader: Option<String>,
    /// Kill until the first acknowledged put that was sent after the kill: the
    /// write outage a client sees (such a put cannot have been served by the dead leader).
    pub write_gap_ms: Option<f64>,
    /// Kill until the probed member first reported a leader other than the old one.
    pub leader_gap_ms: Option<f64>,
    /// Longest stretch without any acknowledgement during the whole probe, the kill included.
    pub longest_ack_gap_ms: f64,
    /// Puts acknowledged before the kill (they show that writes flowed).
    pub acked_before_kill: u64,
    /// Puts sent in total.
    pub puts_sent: u64,
    /// Puts acknowledged in total.
    pub puts_ok: u64,
    /// Puts that failed or timed out (expected while there is no leader).
    pub put_errors: u64,
    /// The first few put errors.
    pub sample_put_errors: Vec<String>,
}

/// One finished put.
struct Outcome {
    sent: Instant,
    done: Instant,
    result: Result<(), String>,
}

async fn status(
    client: &mut MaintenanceClient<Channel>,
    limit: Duration,
) -> Result<(u64, u64), String> {
    let resp = call(limit, client.status(StatusRequest {})).await?;
    let member = resp.header.map(|h| h.member_id).unwrap_or(0);
    Ok((member, resp.leader))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn one_channel(chans: Vec<Channel>) -> Result<Channel, LoadError> {
    chans
        .into_iter()
        .next()
        .ok_or_else(|| LoadError::Config("no channel was opened".into()))
}

/// Writes to a follower, kills the leader, and times the write outage.
pub async fn failover_probe(cfg: &ProbeConfig) -> Result<ProbeReport, LoadError> {
    if cfg.kill_pid <= 0 {
        return Err(LoadError::Config("--kill-pid must name a process".into()));
    }
    if cfg.target.endpoints().len() != 1 {
        return Err(LoadError::Config(
            "the failover probe writes to exactly one endpoint".into(),
        ));
    }
    if cfg.interval.is_zero() {
        return Err(LoadError::Config("--interval-ms must be positive".into()));
    }
    // Separate connections for puts and status polls, so a backlog of stuck
    // puts cannot delay the leader observation.
    let put_chan = one_channel(connect(&cfg.target, 1).await?)?;
    let mut maint = MaintenanceClient::new(one_channel(connect(&cfg.target, 1).await?)?);
    let (member, old_leader) = status(&mut maint, Duration::from_secs(5))
        .await
        .map_err(|e| LoadError::Config(format!("status of the probed member failed: {e}")))?;
    if old_leader == 0 {
        return Err(LoadError::Config(
            "the probed member knows no leader".into(),
        ));
    }
    if old_leader == member {
        return Err(LoadError::Config(
            "the probed member is the leader; probe a follower".into(),
        ));
    }

    // Open-loop writer: one put every `interval`, each in its own task.
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let shape = KeyShape::new(&cfg.prefix, cfg.key_size, 1000);
    let value = filler(cfg.val_size);
    let limit = cfg.request_timeout;
    let interval = cfg.interval;
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut sent = 0u64;
        loop {
            tick.tick().await;
            let mut kv = KvClient::new(put_chan.clone());
            let req = PutRequest {
                key: shape.key(sent % 1000),
                value: value.clone(),
                ..Default::default()
            };
            let tx = tx.clone();
            sent += 1;
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = call(limit, kv.put(req)).await.map(|_| ());
                let _ = tx.send(Outcome {
                    sent,
                    done: Instant::now(),
                    result,
                });
            });
        }
    });

    let mut acks: Vec<Instant> = Vec::new();
    let mut puts_sent = 0u64;
    let mut put_errors = 0u64;
    let mut sample_put_errors = Vec::new();
    let mut record = |o: Outcome, acks: &mut Vec<Instant>| {
        puts_sent += 1;
        match o.result {
            Ok(()) => acks.push(o.done),
            Err(e) => {
                put_errors += 1;
                if sample_put_errors.len() < KEPT_ERRORS {
                    sample_put_errors.push(e);
                }
            }
        }
    };

    let probe_start = Instant::now();
    let warm_end = tokio::time::Instant::now() + cfg.warmup;
    loop {
        tokio::select! {
            o = rx.recv() => match o {
                Some(o) => record(o, &mut acks),
                None => break,
            },
            _ = tokio::time::sleep_until(warm_end) => break,
        }
    }
    let acked_before_kill = acks.len() as u64;
    if acked_before_kill == 0 {
        writer.abort();
        return Err(LoadError::Config(format!(
            "no put was acknowledged during the {:.1}s warm-up: {:?}",
            cfg.warmup.as_secs_f64(),
            sample_put_errors
        )));
    }

    // SAFETY: kill(2) with a plain pid and signal number has no memory effects.
    let rc = unsafe { libc::kill(cfg.kill_pid, libc::SIGKILL) };
    let killed = Instant::now();
    if rc != 0 {
        writer.abort();
        return Err(LoadError::Config(format!(
            "kill -9 {} failed: {}",
            cfg.kill_pid,
            std::io::Error::last_os_error()
        )));
    }

    // Leader watcher: polls the probed member until it names a new leader.
    let (leader_tx, mut leader_rx) = mpsc::unbounded_channel::<(Instant, u64)>();
    let poller = tokio::spawn(async move {
        loop {
            if let Ok((_, leader)) = status(&mut maint, Duration::from_millis(500)).await {
                if leader != 0 && leader != old_leader {
                    let _ = leader_tx.send((Instant::now(), leader));
                    return;
                }
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    });

    let give_up = tokio::time::Instant::now() + cfg.max_wait;
    let mut end: Option<tokio::time::Instant> = None;
    let mut first_write: Option<Instant> = None;
    let mut new_leader: Option<(Instant, u64)> = None;
    loop {
        let stop_at = end.unwrap_or(give_up);
        tokio::select! {
            o = rx.recv() => match o {
                Some(o) => {
                    if o.result.is_ok() && o.sent >= killed && first_write.is_none() {
                        first_write = Some(o.done);
                    }
                    record(o, &mut acks);
                }
                None => break,
            },
            l = leader_rx.recv(), if new_leader.is_none() => {
                if let Some(l) = l {
                    new_leader = Some(l);
                }
            }
            _ = tokio::time::sleep_until(stop_at) => break,
        }
        if end.is_none() && first_write.is_some() && new_leader.is_some() {
            end = Some(tokio::time::Instant::now() + cfg.tail);
        }
    }
    writer.abort();
    poller.abort();
    let stopped = Instant::now();

    acks.sort();
    let mut longest = Duration::ZERO;
    let mut prev = probe_start;
    for &a in acks.iter().chain(std::iter::once(&stopped)) {
        longest = longest.max(a.saturating_duration_since(prev));
        prev = a;
    }
    Ok(ProbeReport {
        endpoint: cfg.target.endpoint.clone(),
        killed_pid: cfg.kill_pid,
        member: format!("{member:x}"),
        old_leader: format!("{old_leader:x}"),
        new_leader: new_leader.map(|(_, l)| format!("{l:x}")),
        write_gap_ms: first_write.map(|t| ms(t.saturating_duration_since(killed))),
        leader_gap_ms: new_leader.map(|(t, _)| ms(t.saturating_duration_since(killed))),
        longest_ack_gap_ms: ms(longest),
        acked_before_kill,
        puts_sent,
        puts_ok: acks.len() as u64,
        put_errors,
        sample_put_errors,
    })
}

/// A member to wait for: its name, or the peer address it was added with
/// (etcd lists a member that was added but has not started yet without a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// Member name.
    pub name: String,
    /// `host:port` of its peer URL, if known.
    pub peer: Option<String>,
}

impl MemberRef {
    /// Parses `NAME` or `NAME@HOST:PORT`.
    pub fn parse(s: &str) -> Result<MemberRef, String> {
        let (name, peer) = match s.split_once('@') {
            Some((n, p)) => (n, Some(p.to_string())),
            None => (s, None),
        };
        if name.is_empty() || peer.as_deref() == Some("") {
            return Err(format!("bad member {s:?}: want NAME or NAME@HOST:PORT"));
        }
        Ok(MemberRef {
            name: name.to_string(),
            peer,
        })
    }

    fn matches(&self, m: &Member) -> bool {
        if !m.name.is_empty() && m.name == self.name {
            return true;
        }
        let Some(peer) = &self.peer else { return false };
        m.peer_ur_ls.iter().any(|u| {
            u.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                == peer
        })
    }
}

/// Waits until members become voters (optionally promoting learners, as etcd needs).
#[derive(Debug, Clone)]
pub struct JoinWaitConfig {
    /// A member that stays up and answers `MemberList`.
    pub target: Target,
    /// The joining members.
    pub members: Vec<MemberRef>,
    /// Wall-clock start of the join (e.g. `date +%s%N` before starting it).
    pub since: SystemTime,
    /// Call `MemberPromote` for the members while they are learners (etcd).
    pub promote: bool,
    /// Time between polls.
    pub poll: Duration,
    /// Give up after this long (counted from `since`).
    pub timeout: Duration,
}

/// When one joining member was seen in each state; milliseconds after `since`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberTimes {
    /// First listed, learner or voter.
    pub listed_ms: Option<f64>,
    /// First listed as a voter.
    pub voter_ms: Option<f64>,
    /// `MemberPromote` calls made (promote mode).
    pub promote_calls: u64,
    /// The last refusal of a promote call.
    pub last_promote_error: Option<String>,
}

/// Times of every member waited for.
#[derive(Debug, Clone, Serialize)]
pub struct JoinTimes {
    /// The member that was polled.
    pub endpoint: String,
    /// Whether learners were promoted by the waiter.
    pub promote: bool,
    /// Per member name.
    pub members: BTreeMap<String, MemberTimes>,
    /// The slowest member's `voter_ms`, when all became voters.
    pub all_voters_ms: Option<f64>,
}

fn since_ms(since: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(since)
        .map(ms)
        .unwrap_or(0.0)
}

/// Polls the member list until every member in `cfg` is a voter or time runs out.
pub async fn wait_voters(cfg: &JoinWaitConfig) -> Result<JoinTimes, LoadError> {
    let chan = one_channel(connect(&cfg.target, 1).await?)?;
    let mut cluster = ClusterClient::new(chan);
    let mut times: BTreeMap<String, MemberTimes> = cfg
        .members
        .iter()
        .map(|m| (m.name.clone(), MemberTimes::default()))
        .collect();
    let deadline = cfg.since + cfg.timeout;
    let limit = Duration::from_secs(2);
    loop {
        if let Ok(resp) = call(
            limit,
            cluster.member_list(MemberListRequest {
                linearizable: false,
            }),
        )
        .await
        {
            let now = since_ms(cfg.since);
            for want in &cfg.members {
                let Some(m) = resp.members.iter().find(|m| want.matches(m)) else {
                    continue;
                };
                let t = times.entry(want.name.clone()).or_default();
                t.listed_ms.get_or_insert(now);
                if !m.is_learner {
                    t.voter_ms.get_or_insert(now);
                } else if cfg.promote {
                    t.promote_calls += 1;
                    if let Err(e) = call(
                        limit,
                        cluster.member_promote(MemberPromoteRequest { id: m.id }),
                    )
                    .await
                    {
                        t.last_promote_error = Some(e);
                    }
                }
            }
        }
        if times.values().all(|t| t.voter_ms.is_some()) || SystemTime::now() > deadline {
            break;
        }
        tokio::time::sleep(cfg.poll).await;
    }
    let all = times
        .values()
        .map(|t| t.voter_ms)
        .try_fold(0.0f64, |acc, v| v.map(|v| acc.max(v)));
    Ok(JoinTimes {
        endpoint: cfg.target.endpoint.clone(),
        promote: cfg.promote,
        members: times,
        all_voters_ms: all,
    })
}

/// `since` from nanoseconds after the Unix epoch.
pub fn unix_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, peer: &str) -> Member {
        Member {
            name: name.to_string(),
            peer_ur_ls: vec![peer.to_string()],
            ..Default::default()
        }
    }

    #[test]
    fn member_refs_match_by_name_or_peer() {
        let r = MemberRef::parse("b@127.0.0.1:2380").unwrap();
        assert!(r.matches(&member("b", "https://10.0.0.1:1")));
        assert!(r.matches(&member("", "http://127.0.0.1:2380")));
        assert!(!r.matches(&member("", "http://127.0.0.1:2381")));
        let n = MemberRef::parse("c").unwrap();
        assert!(n.matches(&member("c", "x")));
        assert!(!n.matches(&member("", "x")));
        assert!(MemberRef::parse("@x").is_err());
        assert!(MemberRef::parse("a@").is_err());
    }
}
