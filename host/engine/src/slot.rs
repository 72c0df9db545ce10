//! Hot swap. A [`Slot`] holds the deployment a pipeline stage currently runs; swapping is an
//! atomic pointer store. Each worker's [`Runner`] checks the pointer between batches and
//! moves to the new version, so a call in flight always finishes on the version it started
//! with and every result is attributable to exactly one version.

use crate::engine::Plugin;
use crate::error::{Error, Result};
use crate::host::{KeyedState, MemoryState};
use crate::instance::Instance;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A deployment's version id: the first 16 hex digits of sha256(plugin sha256, config, and
/// the initial model snapshot if any). The same plugin with another config, or with other
/// trained parameters, is another version.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct VersionId(pub String);

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plugin with its stage config: what a stage runs.
#[derive(Debug)]
pub struct Deployment {
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Its configuration (JSON), handed to `init`/`open`.
    pub config: String,
    /// Version id of (plugin, config, snapshot).
    pub version: VersionId,
    /// Model parameters every instance restores right after `init` (a model trained by
    /// the host, served by the plugin through `restore`).
    pub snapshot: Option<Vec<u8>>,
}

impl Deployment {
    /// A deployment of `plugin` with `config`.
    pub fn new(plugin: Arc<Plugin>, config: impl Into<String>) -> Arc<Self> {
        Self::build(plugin, config.into(), None)
    }

    /// A deployment of a model `plugin` with `config` whose instances restore `snapshot`
    /// after `init`: how a model trained in the host is served by its Wasm plugin.
    pub fn with_snapshot(
        plugin: Arc<Plugin>,
        config: impl Into<String>,
        snapshot: Vec<u8>,
    ) -> Arc<Self> {
        Self::build(plugin, config.into(), Some(snapshot))
    }

    fn build(plugin: Arc<Plugin>, config: String, snapshot: Option<Vec<u8>>) -> Arc<Self> {
        let mut h = Sha256::new();
        h.update(plugin.id().0.as_bytes());
        h.update([0]);
        h.update(config.as_bytes());
        if let Some(s) = &snapshot {
            h.update([0]);
            h.update(s);
        }
        let version = VersionId(hex::encode(&h.finalize()[..8]));
        Arc::new(Deployment {
            plugin,
            config,
            version,
            snapshot,
        })
    }
}

/// The current deployment of one pipeline stage, plus its history for rollback.
pub struct Slot {
    current: ArcSwap<Deployment>,
    history: Mutex<Vec<Arc<Deployment>>>,
    swaps: AtomicU64,
    /// An instance of the serving deployment built ahead of time by
    /// [`Slot::swap_prepared`], for the first runner that moves to it.
    prepared: Mutex<Option<Instance>>,
    /// Instances runners left behind on a switch, freed by the next
    /// [`Slot::swap_prepared`] (off the workers' path).
    retired: Mutex<Vec<Instance>>,
}

/// Most retired instances a slot keeps before runners free them themselves.
const RETIRED_MAX: usize = 4;

impl Slot {
    /// A slot serving `deployment`.
    pub fn new(deployment: Arc<Deployment>) -> Arc<Self> {
        Arc::new(Slot {
            current: ArcSwap::new(deployment.clone()),
            history: Mutex::new(vec![deployment]),
            swaps: AtomicU64::new(0),
            prepared: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
        })
    }

    /// The deployment now serving.
    pub fn current(&self) -> Arc<Deployment> {
        self.current.load_full()
    }

    /// Number of swaps (including rollbacks) so far.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Deployment>>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every deployment this slot has served, oldest first.
    pub fn history(&self) -> Vec<Arc<Deployment>> {
        self.lock_history().clone()
    }

    /// Makes `next` the serving deployment and returns the one it replaced. The new
    /// plugin must already be compiled ([`crate::Engine::load`]); this is a pointer store.
    pub fn swap(&self, next: Arc<Deployment>) -> Result<Arc<Deployment>> {
        let cur = self.current();
        if cur.plugin.kind() != next.plugin.kind() {
            return Err(Error::WrongKind {
                plugin: next.plugin.id().short().to_string(),
                kind: next.plugin.kind().as_str(),
                func: "a swap into a slot of another kind",
            });
        }
        let mut history = self.lock_history();
        history.push(next.clone());
        let prev = self.current.swap(next);
        self.swaps.fetch_add(1, Ordering::Relaxed);
        Ok(prev)
    }

    /// Like [`Slot::swap`], but first instantiates `next` on the caller's thread (running
    /// its `init` with the config), so the first runner that moves to it takes the ready
    /// instance instead of instantiating between two batches: the worker's pause shrinks
    /// to a state hand-over.
    pub fn swap_prepared(&self, next: Arc<Deployment>) -> Result<Arc<Deployment>> {
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        drop(retired);
        let inst = Instance::new(next.clone())?;
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(inst);
        self.swap(next)
    }

    /// Like [`Slot::swap_prepared`], with an instance the caller already built (and, for
    /// example, validated) of the deployment to serve.
    pub fn swap_instance(&self, inst: Instance) -> Result<Arc<Deployment>> {
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        drop(retired);
        let next = inst.deployment().clone();
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(inst);
        self.swap(next)
    }

    /// Keeps an instance a runner switched away from, to be freed off the worker's path.
    fn retire(&self, old: Instance) {
        let mut g = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < RETIRED_MAX {
            g.push(old);
        } else {
            drop(g);
            drop(old);
        }
    }

    /// The prepared instance, if it is of `deployment`.
    fn take_prepared(&self, deployment: &Arc<Deployment>) -> Option<Instance> {
        let mut g = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(i) if Arc::ptr_eq(i.deployment(), deployment) => g.take(),
            Some(_) => {
                // Superseded by a later swap: drop it.
                *g = None;
                None
            }
            None => None,
        }
    }

    /// What a rollback would serve: the deployment `version` (any that served here), or
    /// by default the last one that served before the current version.
    pub fn rollback_target(&self, version: Option<&VersionId>) -> Result<Arc<Deployment>> {
        let cur = self.current();
        let history = self.lock_history();
        let found = match version {
            Some(v) => history.iter().rev().find(|d| &d.version == v),
            None => history.iter().rev().find(|d| d.version != cur.version),
        };
        match (found, version) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(v)) => Err(Error::Internal(format!(
                "version {v} never served in this slot"
            ))),
            (None, None) => Err(Error::Internal("nothing to roll back to".into())),
        }
    }

    /// Swaps back to the deployment that served before the current one.
    pub fn rollback(&self) -> Result<Arc<Deployment>> {
        let cur = self.current();
        let prev = {
            let history = self.lock_history();
            history
                .iter()
                .rev()
                .find(|d| d.version != cur.version)
                .cloned()
        };
        match prev {
            Some(p) => {
                self.swap(p.clone())?;
                Ok(p)
            }
            None => Err(Error::Internal("nothing to roll back to".into())),
        }
    }

    /// Swaps back to an earlier version by id. No recompilation: the history keeps the
    /// compiled plugin.
    pub fn rollback_to(&self, version: &VersionId) -> Result<Arc<Deployment>> {
        let found = self
            .lock_history()
            .iter()
            .rev()
            .find(|d| &d.version == version)
            .cloned();
        match found {
            Some(d) => {
                self.swap(d.clone())?;
                Ok(d)
            }
            None => Err(Error::Internal(format!(
                "version {version} never served in this slot"
            ))),
        }
    }
}

/// A worker's handle on a [`Slot`]: owns an [`Instance`] of the serving deployment and
/// replaces it when the slot changes. Keyed state moves to the new version; a model's
/// learned parameters move too when `carry_model_state` is set and both versions support
/// snapshot/restore (a version that refuses them starts from its own).
pub struct Runner {
    slot: Arc<Slot>,
    instance: Option<Instance>,
    initial_state: Option<Box<dyn KeyedState>>,
    carry_model_state: bool,
    switches: u64,
}

impl Runner {
    /// A runner on `slot`. The instance is created on first use.
    pub fn new(slot: Arc<Slot>) -> Self {
        Runner {
            slot,
            instance: None,
            initial_state: None,
            carry_model_state: false,
            switches: 0,
        }
    }

    /// Gives the first instance this keyed-state backend (instead of an empty in-memory
    /// one), for example a store that tracks changes for checkpoints. Later versions
    /// inherit it on a swap.
    pub fn with_state(mut self, state: Box<dyn KeyedState>) -> Self {
        self.initial_state = Some(state);
        self
    }

    /// Carries a model's parameters across swaps via snapshot/restore.
    pub fn carry_model_state(mut self, yes: bool) -> Self {
        self.carry_model_state = yes;
        self
    }

    /// How many times this runner moved to another version.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The slot it follows.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The instance of the serving deployment, switching versions first if the slot
    /// changed since the last call.
    pub fn instance(&mut self) -> Result<&mut Instance> {
        let current = self.slot.current.load();
        let stale = match &self.instance {
            Some(i) => !Arc::ptr_eq(i.deployment(), &*current),
            None => true,
        };
        if stale {
            let next = Arc::clone(&*current);
            drop(current);
            let (state, snapshot): (Box<dyn KeyedState>, Option<Vec<u8>>) =
                match self.instance.as_mut() {
                    Some(old) => {
                        let snap = if self.carry_model_state
                            && old.deployment().plugin.kind() == crate::PluginKind::Model
                        {
                            old.snapshot().ok().filter(|s| !s.is_empty())
                        } else {
                            None
                        };
                        (old.take_state(), snap)
                    }
                    None => (
                        self.initial_state
                            .take()
                            .unwrap_or_else(|| Box::new(MemoryState::default())),
                        None,
                    ),
                };
            let had_old = self.instance.is_some();
            let mut inst = match self.slot.take_prepared(&next) {
                Some(mut ready) => {
                    ready.set_state(state);
                    ready
                }
                None => Instance::with_state(next, state)?,
            };
            // The new version may not take the old one's parameters (other dimensions, say):
            // it then starts from its own, and the stream goes on.
            if let Some(snap) = snapshot
                && let Err(e) = inst.restore(&snap)
            {
                tracing::warn!(
                    version = %inst.deployment().version,
                    "the new version did not take the learned parameters: {e}"
                );
            }
            if let Some(old) = self.instance.replace(inst) {
                // Freeing a store unmaps its memory: leave that to the control plane's
                // next swap rather than pausing this worker for it.
                self.slot.retire(old);
            }
            if had_old {
                self.switches += 1;
            }
        }
        match self.instance.as_mut() {
            Some(i) => Ok(i),
            None => Err(Error::Internal("runner has no instance".into())),
        }
    }

    /// Runs `f` on the serving instance and returns the version that produced the result.
    pub fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Instance) -> Result<R>,
    ) -> Result<(crate::VersionId, R)> {
        let inst = self.instance()?;
        let version = inst.deployment().version.clone();
        f(inst).map(|r| (version, r))
    }
}
