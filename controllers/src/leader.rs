//! Leader election over a `coordination.k8s.io/v1` Lease, in the shape of client-go's
//! `leaderelection` package.
//!
//! Every candidate polls the Lease `<namespace>/<name>`:
//!
//! - no Lease: create it holding it (a concurrent create loses with 409 AlreadyExists);
//! - held by us: renew (`renewTime`);
//! - held by someone else: take it over only once it has *expired*, i.e. its record
//!   (holder, renewTime, resourceVersion) has not changed for `leaseDurationSeconds` as measured
//!   on our own monotonic clock (so clock skew between hosts cannot shorten a lease), or when
//!   the holder released it (empty `holderIdentity`).
//!
//! Every write is a replace carrying the `resourceVersion` that was read, so two candidates
//! that both saw the Lease expired cannot both win: the second write gets 409 Conflict.
//!
//! A leader that could not renew for `renew_deadline` (shorter than the lease duration) steps
//! down before anyone else may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// The namespace of the control plane's Leases.
pub const LEASE_NAMESPACE: &str = "tugboat-system";

/// Errors of one leader-election round.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The apiserver call failed (other than a lost race, which is not an error).
    #[error("lease {name}: {source}")]
    Api {
        /// The Lease name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A round did not finish within the renew deadline.
    #[error("lease {lease}: no answer within the renew deadline")]
    Timeout {
        /// The Lease name.
        lease: String,
    },
}

/// Settings of a [`LeaderElector`].
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease (default [`LEASE_NAMESPACE`]).
    pub namespace: String,
    /// Name of the Lease, one per component (e.g. `tugboat-scheduler`).
    pub lease_name: String,
    /// This candidate's identity, written to `holderIdentity`; unique per candidate.
    pub identity: String,
    /// `leaseDurationSeconds`: how long others wait after the last renewal before taking over.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (must be < `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// Defaults: namespace `tugboat-system`, 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(lease_name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderElectionConfig {
            namespace: LEASE_NAMESPACE.to_string(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate last saw of the Lease, and when (on its monotonic clock).
#[derive(Clone, Debug)]
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    at: Instant,
}

/// A leader-election candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaderElectionConfig,
    observed: Option<Observed>,
    last_renew: Option<Instant>,
}

impl LeaderElector {
    /// A candidate using `client` with the settings `cfg`.
    pub fn new(client: Client, cfg: LeaderElectionConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            last_renew: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaderElectionConfig {
        &self.cfg
    }

    fn api_err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            name: self.cfg.lease_name.clone(),
            source,
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One round: acquires or renews the Lease. `Ok(true)` when this candidate holds it now;
    /// `Ok(false)` when someone else does or a concurrent writer won the race.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(jiff::Timestamp::now());
        // A renewal counts from when it was sent, not answered: others time the Lease from
        // when they see the write, which may be long before a slow answer arrives.
        let sent = Instant::now();
        let existing = match self.api.get_opt(&self.cfg.lease_name).await {
            Ok(l) => l,
            Err(e) => return Err(self.api_err(e)),
        };
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.lease_name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.last_renew = Some(sent);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.api_err(e)),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone();
        // Refresh the observation when the record changed.
        let changed = match &self.observed {
            Some(o) => {
                o.holder != holder || o.renew_time != spec.renew_time || o.resource_version != rv
            }
            None => true,
        };
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                resource_version: rv,
                at: Instant::now(),
            });
        }
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.cfg.lease_duration);
            let observed_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
            if observed_at.elapsed() < duration {
                return Ok(false);
            }
        }

        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.cfg.identity.clone());
        new_spec.lease_duration_seconds = Some(self.lease_seconds());
        new_spec.renew_time = Some(now.clone());
        if !ours {
            new_spec.acquire_time = Some(now);
            new_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        lease.spec = Some(new_spec);
        // `lease.metadata.resourceVersion` is the one we read: a replace is conditional on it.
        match self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.last_renew = Some(sent);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Gives the Lease up (empty `holderIdentity`) if this candidate holds it, so another
    /// candidate can take over at once. Best effort.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let lease = match self.api.get_opt(&self.cfg.lease_name).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => return Err(self.api_err(e)),
        };
        let mut lease = lease;
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.last_renew = None;
        match self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Runs the election until `shutdown` turns true (or its sender is dropped), publishing
    /// leadership on `is_leader`. Releases the Lease on shutdown.
    pub async fn run(
        mut self,
        is_leader: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            // A leader's round may not outlast its renew deadline: when it cannot renew in
            // time it steps down before anyone else may take over (lease duration > deadline).
            let budget = match self.last_renew {
                Some(t) if *is_leader.borrow() => {
                    self.cfg.renew_deadline.saturating_sub(t.elapsed())
                }
                _ => self.cfg.renew_deadline,
            };
            let round = tokio::time::timeout(budget, self.try_acquire_or_renew()).await;
            let round = round.unwrap_or_else(|_| {
                Err(LeaderError::Timeout {
                    lease: self.cfg.lease_name.clone(),
                })
            });
            let leading = match round {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    // Keep leading only while the last renewal is within the renew deadline.
                    self.last_renew
                        .is_some_and(|t| t.elapsed() < self.cfg.renew_deadline)
                        && *is_leader.borrow()
                }
            };
            if leading != *is_leader.borrow() {
                tracing::info!(
                    lease = %self.cfg.lease_name,
                    identity = %self.cfg.identity,
                    leading,
                    "leadership changed"
                );
            }
            is_leader.send_if_modified(|v| std::mem::replace(v, leading) != leading);
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        is_leader.send_if_modified(|v| std::mem::replace(v, false));
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "releasing the lease failed");
        }
    }

    /// Spawns [`LeaderElector::run`]; returns the leadership channel and a handle that stops
    /// the election (and releases the Lease) when [`LeaderHandle::stop`] is called.
    pub fn spawn(self) -> LeaderHandle {
        let (tx, rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.run(tx, stop_rx));
        LeaderHandle {
            is_leader: rx,
            stop: stop_tx,
            task,
        }
    }
}

/// A running election (see [`LeaderElector::spawn`]).
pub struct LeaderHandle {
    /// `true` while this candidate is the leader.
    pub is_leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderHandle {
    /// Stops campaigning, releases the Lease and waits for the election task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "leader election task failed");
        }
    }

    /// Stops the election task abruptly, without releasing the Lease (as if the process died).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Resolves when leadership is lost (or the channel closes).
pub async fn wait_not_leader(is_leader: &mut watch::Receiver<bool>) {
    loop {
        if !*is_leader.borrow_and_update() {
            return;
        }
        if is_leader.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `term` once per leadership term of `is_leader` (it gets the receiver, to end itself
/// when the term ends) and logs the hand-overs as `component`; returns when the sender is
/// dropped.
pub async fn run_terms<F, Fut>(component: &str, mut is_leader: watch::Receiver<bool>, mut term: F)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        while !*is_leader.borrow_and_update() {
            if is_leader.changed().await.is_err() {
                return;
            }
        }
        tracing::info!("{component} active");
        term(is_leader.clone()).await;
        if is_leader.has_changed().is_err() {
            return;
        }
        tracing::info!("{component} standing by");
    }
}

/// Runs `work` until it ends or leadership is lost, whichever comes first (for terms whose
/// tasks stop when dropped).
pub async fn until_not_leader(
    work: impl std::future::Future<Output = ()>,
    mut is_leader: watch::Receiver<bool>,
) {
    tokio::select! {
        () = work => {}
        () = wait_not_leader(&mut is_leader) => {}
    }
}
