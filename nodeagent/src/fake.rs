//! An in-memory [`Runtime`] with knobs, deterministic under a seed.
//!
//! VMs boot after [`FakeConfig::boot_delay`], a start fails with probability
//! [`FakeConfig::failure_rate`] (drawn from a seeded RNG), and a running VM crashes after
//! [`FakeConfig::crash_after`] on its first [`FakeConfig::crash_boots`] boots. Clones share
//! their state, so a restarted agent finds the VMs of the previous one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast;

use crate::runtime::{Runtime, RuntimeError, RuntimeEvent, VmSpec, VmState, VmStatus};

/// Knobs of a [`FakeRuntime`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Time from `start` to `Running`.
    pub boot_delay: Duration,
    /// Probability in `[0, 1]` that a `start` fails.
    pub failure_rate: f64,
    /// A running VM crashes this long after reaching `Running` (`None`: never).
    pub crash_after: Option<Duration>,
    /// Only the first this-many boots of each VM crash (`None`: every boot).
    pub crash_boots: Option<u32>,
    /// Seed of the RNG that decides start failures.
    pub seed: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            boot_delay: Duration::from_millis(100),
            failure_rate: 0.0,
            crash_after: None,
            crash_boots: None,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug)]
struct FakeVm {
    spec: VmSpec,
    state: VmState,
    started_at: Option<jiff::Timestamp>,
    created_at: jiff::Timestamp,
    ip: String,
    boots: u32,
    /// Bumped on every start/stop so stale timers do nothing.
    epoch: u64,
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    rng: StdRng,
    vms: BTreeMap<String, FakeVm>,
    images: BTreeSet<String>,
    next_ip: u32,
}

/// The fake runtime (cheap to clone; clones share their VMs).
#[derive(Clone, Debug)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl FakeRuntime {
    /// A runtime with these knobs and no VMs.
    pub fn new(config: FakeConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rng: StdRng::seed_from_u64(config.seed),
                config,
                vms: BTreeMap::new(),
                images: BTreeSet::new(),
                next_ip: 0,
            })),
            events,
        }
    }

    /// Replaces the knobs (the RNG keeps its sequence).
    pub fn set_config(&self, config: FakeConfig) {
        self.lock().config = config;
    }

    /// Makes a VM crash now (no-op unless it is starting or running).
    pub fn crash(&self, uid: &str) {
        let changed = {
            let mut inner = self.lock();
            match inner.vms.get_mut(uid) {
                Some(vm) if matches!(vm.state, VmState::Running | VmState::Starting) => {
                    vm.state = VmState::Crashed;
                    vm.started_at = None;
                    vm.epoch += 1;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.emit(uid, Some(VmState::Crashed));
        }
    }

    /// Images prepared so far.
    pub fn images(&self) -> Vec<String> {
        self.lock().images.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a fake; keep going with the inner value.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, uid: &str, state: Option<VmState>) {
        // No receivers is fine.
        let _ = self.events.send(RuntimeEvent {
            uid: uid.to_string(),
            state,
        });
    }

    fn spawn_boot(&self, uid: String, epoch: u64, boot_delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(boot_delay).await;
            let crash = {
                let mut inner = this.lock();
                let (crash_after, crash_boots) =
                    (inner.config.crash_after, inner.config.crash_boots);
                let Some(vm) = inner.vms.get_mut(&uid) else {
                    return;
                };
                if vm.epoch != epoch || vm.state != VmState::Starting {
                    return;
                }
                vm.state = VmState::Running;
                vm.started_at = Some(jiff::Timestamp::now());
                crash_after.filter(|_| crash_boots.is_none_or(|n| vm.boots <= n))
            };
            this.emit(&uid, Some(VmState::Running));
            if let Some(after) = crash {
                tokio::time::sleep(after).await;
                let crashed = {
                    let mut inner = this.lock();
                    match inner.vms.get_mut(&uid) {
                        Some(vm) if vm.epoch == epoch && vm.state == VmState::Running => {
                            vm.state = VmState::Crashed;
                            vm.started_at = None;
                            vm.epoch += 1;
                            true
                        }
                        _ => false,
                    }
                };
                if crashed {
                    this.emit(&uid, Some(VmState::Crashed));
                }
            }
        });
    }
}

impl Runtime for FakeRuntime {
    async fn prepare_image(&self, image: &str) -> Result<(), RuntimeError> {
        if image.trim().is_empty() {
            return Err(RuntimeError::Image {
                image: image.to_string(),
                message: "empty image reference".into(),
            });
        }
        self.lock().images.insert(image.to_string());
        Ok(())
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), RuntimeError> {
        let (epoch, delay) = {
            let mut inner = self.lock();
            let failure_rate = inner.config.failure_rate.clamp(0.0, 1.0);
            let delay = inner.config.boot_delay;
            if let Some(vm) = inner.vms.get(&spec.uid) {
                if matches!(vm.state, VmState::Starting | VmState::Running) {
                    return Ok(());
                }
            }
            if failure_rate > 0.0 && inner.rng.random_bool(failure_rate) {
                return Err(RuntimeError::Start {
                    uid: spec.uid.clone(),
                    message: "injected failure".into(),
                });
            }
            inner.next_ip += 1;
            let n = inner.next_ip;
            let ip = format!("10.244.{}.{}", (n >> 8) & 0xff, n & 0xff);
            let vm = inner.vms.entry(spec.uid.clone()).or_insert_with(|| FakeVm {
                spec: spec.clone(),
                state: VmState::Stopped,
                started_at: None,
                created_at: jiff::Timestamp::now(),
                ip,
                boots: 0,
                epoch: 0,
            });
            vm.state = VmState::Starting;
            vm.started_at = None;
            vm.boots += 1;
            vm.epoch += 1;
            (vm.epoch, delay)
        };
        self.emit(&spec.uid, Some(VmState::Starting));
        self.spawn_boot(spec.uid.clone(), epoch, delay);
        Ok(())
    }

    async fn stop(&self, uid: &str, _graceful: bool) -> Result<(), RuntimeError> {
        let changed = {
            let mut inner = self.lock();
            let Some(vm) = inner.vms.get_mut(uid) else {
                return Err(RuntimeError::NotFound(uid.to_string()));
            };
            if vm.state == VmState::Stopped {
                false
            } else {
                vm.state = VmState::Stopped;
                vm.started_at = None;
                vm.epoch += 1;
                true
            }
        };
        if changed {
            self.emit(uid, Some(VmState::Stopped));
        }
        Ok(())
    }

    async fn delete(&self, uid: &str) -> Result<(), RuntimeError> {
        let removed = self.lock().vms.remove(uid).is_some();
        if removed {
            self.emit(uid, None);
        }
        Ok(())
    }

    async fn status(&self, uid: &str) -> Result<Option<VmStatus>, RuntimeError> {
        Ok(self.lock().vms.get(uid).map(|vm| VmStatus {
            state: vm.state,
            started_at: vm.started_at,
            created_at: vm.created_at,
            ip_addresses: if vm.state == VmState::Running {
                vec![vm.ip.clone()]
            } else {
                Vec::new()
            },
            restarts: vm.boots.saturating_sub(1),
        }))
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.lock().vms.keys().cloned().collect())
    }

    async fn spec(&self, uid: &str) -> Result<Option<VmSpec>, RuntimeError> {
        Ok(self.lock().vms.get(uid).map(|vm| vm.spec.clone()))
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: &str) -> VmSpec {
        VmSpec {
            uid: uid.into(),
            namespace: "default".into(),
            name: uid.into(),
            image: "img".into(),
        }
    }

    async fn wait_state(rt: &FakeRuntime, uid: &str, state: VmState) -> VmStatus {
        let mut events = rt.events();
        loop {
            if let Some(st) = rt.status(uid).await.unwrap() {
                if st.state == state {
                    return st;
                }
            }
            tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("state change within 30s")
                .expect("event channel open");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn boots_stops_and_deletes() {
        let rt = FakeRuntime::new(FakeConfig::default());
        rt.prepare_image("img").await.unwrap();
        rt.start(&spec("a")).await.unwrap();
        assert_eq!(
            rt.status("a").await.unwrap().unwrap().state,
            VmState::Starting
        );
        let st = wait_state(&rt, "a", VmState::Running).await;
        assert!(st.started_at.is_some());
        assert_eq!(st.ip_addresses.len(), 1);
        // Idempotent start keeps the running VM.
        rt.start(&spec("a")).await.unwrap();
        assert_eq!(rt.status("a").await.unwrap().unwrap(), st);
        rt.stop("a", true).await.unwrap();
        rt.stop("a", true).await.unwrap();
        assert_eq!(
            rt.status("a").await.unwrap().unwrap().state,
            VmState::Stopped
        );
        assert_eq!(rt.list().await.unwrap(), vec!["a".to_string()]);
        rt.delete("a").await.unwrap();
        rt.delete("a").await.unwrap();
        assert!(rt.status("a").await.unwrap().is_none());
        assert!(rt.list().await.unwrap().is_empty());
        assert!(rt.prepare_image(" ").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_only_on_first_boots() {
        let rt = FakeRuntime::new(FakeConfig {
            crash_after: Some(Duration::from_secs(1)),
            crash_boots: Some(1),
            ..FakeConfig::default()
        });
        rt.start(&spec("c")).await.unwrap();
        wait_state(&rt, "c", VmState::Running).await;
        wait_state(&rt, "c", VmState::Crashed).await;
        rt.start(&spec("c")).await.unwrap();
        let st = wait_state(&rt, "c", VmState::Running).await;
        assert_eq!(st.restarts, 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            rt.status("c").await.unwrap().unwrap().state,
            VmState::Running
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_deterministic_under_a_seed() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let rt = FakeRuntime::new(FakeConfig {
                failure_rate: 0.5,
                seed,
                ..FakeConfig::default()
            });
            let mut out = Vec::new();
            for i in 0..64 {
                out.push(rt.start(&spec(&format!("vm{i}"))).await.is_ok());
            }
            out
        }
        let a = outcomes(7).await;
        assert_eq!(a, outcomes(7).await);
        assert!(a.iter().any(|ok| *ok) && a.iter().any(|ok| !*ok));
        assert_ne!(a, outcomes(8).await);
    }

    #[tokio::test(start_paused = true)]
    async fn manual_crash_and_stale_timers() {
        let rt = FakeRuntime::new(FakeConfig {
            boot_delay: Duration::from_secs(5),
            ..FakeConfig::default()
        });
        rt.start(&spec("m")).await.unwrap();
        rt.stop("m", false).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The boot timer of the stopped instance must not resurrect it.
        assert_eq!(
            rt.status("m").await.unwrap().unwrap().state,
            VmState::Stopped
        );
        rt.start(&spec("m")).await.unwrap();
        wait_state(&rt, "m", VmState::Running).await;
        rt.crash("m");
        assert_eq!(
            rt.status("m").await.unwrap().unwrap().state,
            VmState::Crashed
        );
        assert!(matches!(
            rt.stop("x", true).await,
            Err(RuntimeError::NotFound(_))
        ));
    }
}
