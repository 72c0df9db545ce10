//! A live plugin instance: a `Store` plus the instantiated bindings, with every call
//! wrapped in limits, trap classification and output checks.

use crate::bindings::extractor::ExtractorPlugin;
use crate::bindings::model::ModelPlugin;
use crate::bindings::operator::OperatorPlugin;
use crate::bindings::{EventBatch, FeatureBatch, PluginError, WindowBatch};
use crate::engine::PluginPre;
use crate::error::{Error, Result, TrapKind};
use crate::host::{HostState, KeyedState, LogBuffer, MemoryState};
use crate::slot::Deployment;
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

/// How many log lines an instance keeps for readers.
const KEEP_LOG_LINES: usize = 1_000;

enum Bound {
    Extractor(ExtractorPlugin),
    Model(ModelPlugin),
    Operator(OperatorPlugin, Option<ResourceAny>),
}

/// One instantiated plugin deployment. Not shared between threads: each worker owns its
/// instances, so calls never contend.
///
/// After a trap the instance is marked broken (a trapped component cannot be re-entered)
/// and transparently rebuilt from its `InstancePre` on the next call, keeping its keyed
/// state and, for a model, the parameters of its last snapshot or restore.
pub struct Instance {
    deployment: Arc<Deployment>,
    store: Store<HostState>,
    bound: Bound,
    logs: Arc<LogBuffer>,
    broken: bool,
    last_snapshot: Option<Vec<u8>>,
    last_fuel_used: u64,
    rebuilds: u64,
}

impl Instance {
    /// Instantiates a deployment with empty in-memory keyed state, and initialises it with
    /// its config (`init`, or `open` for operators).
    pub fn new(deployment: Arc<Deployment>) -> Result<Self> {
        Self::with_state(deployment, Box::new(MemoryState::default()))
    }

    /// Like [`Instance::new`], with the given keyed-state backend.
    pub fn with_state(deployment: Arc<Deployment>, state: Box<dyn KeyedState>) -> Result<Self> {
        let logs = Arc::new(LogBuffer::new(
            &deployment.plugin.manifest.limits,
            KEEP_LOG_LINES,
        ));
        let (store, bound) = instantiate(&deployment, logs.clone(), state)?;
        let last_snapshot = deployment.snapshot.clone();
        let mut inst = Instance {
            deployment,
            store,
            bound,
            logs,
            broken: false,
            last_snapshot,
            last_fuel_used: 0,
            rebuilds: 0,
        };
        inst.initialise()?;
        Ok(inst)
    }

    /// The deployment (plugin, config, version) this instance runs.
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.deployment
    }

    /// Captured log lines (stdout, stderr and the `log` import).
    pub fn logs(&self) -> &Arc<LogBuffer> {
        &self.logs
    }

    /// Fuel used by the last call (0 when the engine does not meter fuel).
    pub fn last_fuel_used(&self) -> u64 {
        self.last_fuel_used
    }

    /// How many times the instance was rebuilt after a trap.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Takes the keyed-state backend out (leaving an empty one), for example to hand it to
    /// the next version of the stage.
    pub fn take_state(&mut self) -> Box<dyn KeyedState> {
        std::mem::replace(
            &mut self.store.data_mut().state,
            Box::new(MemoryState::default()),
        )
    }

    /// Gives the instance a keyed-state backend.
    pub fn set_state(&mut self, state: Box<dyn KeyedState>) {
        self.store.data_mut().state = state;
    }

    fn plugin_name(&self) -> String {
        self.deployment.plugin.id.short().to_string()
    }

    fn wrong_kind(&self, func: &'static str) -> Error {
        Error::WrongKind {
            plugin: self.plugin_name(),
            kind: self.deployment.plugin.kind().as_str(),
            func,
        }
    }

    fn initialise(&mut self) -> Result<()> {
        let config = self.deployment.config.clone();
        match &self.bound {
            Bound::Extractor(b) => {
                let b = b.weir_operator_extractor().clone();
                self.call("init", 0, |s| b.call_init(s, &config))
            }
            Bound::Model(b) => {
                let b = b.weir_operator_model().clone();
                self.call("init", 0, |s| b.call_init(s, &config))?;
                if let Some(snap) = self.last_snapshot.clone() {
                    self.call("restore", 0, |s| b.call_restore(s, &snap))?;
                }
                Ok(())
            }
            Bound::Operator(b, _) => {
                let guest = b.weir_operator_operator().clone();
                let res = self.call("open", 0, |s| guest.instance().call_open(s, &config))?;
                if let Bound::Operator(_, r) = &mut self.bound {
                    *r = Some(res);
                }
                Ok(())
            }
        }
    }

    /// Rebuilds a broken instance (after a trap) from its pre-instantiated component.
    fn ensure_live(&mut self) -> Result<()> {
        if !self.broken {
            return Ok(());
        }
        let state = self.take_state();
        let (store, bound) = instantiate(&self.deployment, self.logs.clone(), state)?;
        self.store = store;
        self.bound = bound;
        self.broken = false;
        self.rebuilds += 1;
        self.initialise()
    }

    fn call<R>(
        &mut self,
        func: &'static str,
        rows: usize,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<std::result::Result<R, PluginError>>,
    ) -> Result<R> {
        let limits = &self.deployment.plugin.manifest.limits;
        let engine = &self.deployment.plugin.engine.inner;
        let fuel = engine.options.fuel.then(|| limits.fuel_for(rows));
        if let Some(budget) = fuel {
            self.store
                .set_fuel(budget)
                .map_err(|e| Error::Internal(format!("{e:#}")))?;
        }
        let tick_ms = engine.options.epoch_tick.as_millis().max(1) as u64;
        self.store
            .set_epoch_deadline(limits.deadline_ms.div_ceil(tick_ms) + 1);
        self.store.data_mut().limiter.denied_memory = false;
        self.logs.start_call();
        let result = f(&mut self.store);
        let panic = self.logs.end_call();
        if let Some(budget) = fuel {
            self.last_fuel_used = budget.saturating_sub(self.store.get_fuel().unwrap_or(0));
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(Error::Plugin {
                plugin: self.plugin_name(),
                func,
                error,
            }),
            Err(e) => {
                self.broken = true;
                let denied = self.store.data().limiter.denied_memory;
                let kind = classify(&e, denied, panic);
                tracing::debug!(plugin = %self.plugin_name(), func, %kind, "plugin trapped");
                Err(Error::Trap {
                    plugin: self.plugin_name(),
                    func,
                    kind,
                })
            }
        }
    }

    fn bad(&self, func: &'static str, reason: String) -> Error {
        Error::BadOutput {
            plugin: self.plugin_name(),
            func,
            reason,
        }
    }

    fn check_size(&self, func: &'static str, bytes: usize) -> Result<()> {
        let cap = self.deployment.plugin.manifest.limits.output_bytes;
        if bytes > cap {
            return Err(self.bad(
                func,
                format!("output of {bytes} bytes exceeds the limit of {cap} bytes"),
            ));
        }
        Ok(())
    }

    /// Extractor: one feature row per event.
    pub fn extract(&mut self, events: &EventBatch) -> Result<FeatureBatch> {
        self.ensure_live()?;
        let Bound::Extractor(b) = &self.bound else {
            return Err(self.wrong_kind("extract"));
        };
        let b = b.weir_operator_extractor().clone();
        let out = self.call("extract", events.len(), |s| b.call_extract(s, events))?;
        self.check_size("extract", out.values.len() * 8)?;
        if out.rows as usize != events.len() {
            return Err(self.bad(
                "extract",
                format!("{} rows for {} events", out.rows, events.len()),
            ));
        }
        if out.values.len() != out.rows as usize * out.dims as usize {
            return Err(self.bad(
                "extract",
                format!(
                    "{} values for {} x {}",
                    out.values.len(),
                    out.rows,
                    out.dims
                ),
            ));
        }
        Ok(out)
    }

    /// Model: one score per row.
    pub fn predict(&mut self, features: &FeatureBatch) -> Result<Vec<f64>> {
        self.ensure_live()?;
        let Bound::Model(b) = &self.bound else {
            return Err(self.wrong_kind("predict"));
        };
        let b = b.weir_operator_model().clone();
        let out = self.call("predict", features.rows as usize, |s| {
            b.call_predict(s, features)
        })?;
        self.check_size("predict", out.len() * 8)?;
        if out.len() != features.rows as usize {
            return Err(self.bad(
                "predict",
                format!("{} scores for {} rows", out.len(), features.rows),
            ));
        }
        Ok(out)
    }

    /// Model: prequential test-then-train; returns the pre-update score of each row.
    pub fn train(&mut self, features: &FeatureBatch, labels: &[f64]) -> Result<Vec<f64>> {
        if labels.len() != features.rows as usize {
            return Err(Error::Internal(format!(
                "{} labels for {} rows",
                labels.len(),
                features.rows
            )));
        }
        self.ensure_live()?;
        let Bound::Model(b) = &self.bound else {
            return Err(self.wrong_kind("train"));
        };
        let b = b.weir_operator_model().clone();
        let out = self.call("train", features.rows as usize, |s| {
            b.call_train(s, features, labels)
        })?;
        self.check_size("train", out.len() * 8)?;
        if out.len() != features.rows as usize {
            return Err(self.bad(
                "train",
                format!("{} scores for {} rows", out.len(), features.rows),
            ));
        }
        Ok(out)
    }

    /// Model: serialise the learned parameters.
    pub fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.ensure_live()?;
        let Bound::Model(b) = &self.bound else {
            return Err(self.wrong_kind("snapshot"));
        };
        let b = b.weir_operator_model().clone();
        let out = self.call("snapshot", 0, |s| b.call_snapshot(s))?;
        self.check_size("snapshot", out.len())?;
        self.last_snapshot = Some(out.clone());
        Ok(out)
    }

    /// Model: replace the learned parameters.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.ensure_live()?;
        let Bound::Model(b) = &self.bound else {
            return Err(self.wrong_kind("restore"));
        };
        let b = b.weir_operator_model().clone();
        self.call("restore", 0, |s| b.call_restore(s, snapshot))?;
        self.last_snapshot = Some(snapshot.to_vec());
        Ok(())
    }

    /// Operator: process a batch of events.
    pub fn process(&mut self, events: &EventBatch) -> Result<EventBatch> {
        self.ensure_live()?;
        let Bound::Operator(b, Some(r)) = &self.bound else {
            return Err(self.wrong_kind("process"));
        };
        let (guest, r) = (b.weir_operator_operator().clone(), *r);
        let out = self.call("process", events.len(), |s| {
            guest.instance().call_process(s, r, events)
        })?;
        self.check_events("process", &out)?;
        Ok(out)
    }

    /// Operator: fired windows.
    pub fn on_window(&mut self, windows: &WindowBatch) -> Result<EventBatch> {
        self.ensure_live()?;
        let Bound::Operator(b, Some(r)) = &self.bound else {
            return Err(self.wrong_kind("on-window"));
        };
        let (guest, r) = (b.weir_operator_operator().clone(), *r);
        let rows = windows.values.len() / (windows.dims as usize).max(1);
        let out = self.call("on-window", rows + windows.len(), |s| {
            guest.instance().call_on_window(s, r, windows)
        })?;
        self.check_events("on-window", &out)?;
        Ok(out)
    }

    fn check_events(&self, func: &'static str, out: &EventBatch) -> Result<()> {
        self.check_size(func, out.byte_size())?;
        out.check().map_err(|reason| self.bad(func, reason))
    }
}

fn instantiate(
    deployment: &Deployment,
    logs: Arc<LogBuffer>,
    state: Box<dyn KeyedState>,
) -> Result<(Store<HostState>, Bound)> {
    let plugin = &deployment.plugin;
    let limits = &plugin.manifest.limits;
    let mut store = Store::new(
        &plugin.engine.inner.wasmtime,
        HostState::new(limits, logs, state),
    );
    store.limiter(|s| &mut s.limiter);
    if plugin.engine.inner.options.fuel {
        store
            .set_fuel(limits.fuel_per_call)
            .map_err(|e| Error::Internal(format!("{e:#}")))?;
    }
    store.epoch_deadline_trap();
    let tick_ms = plugin.engine.inner.options.epoch_tick.as_millis().max(1) as u64;
    store.set_epoch_deadline(limits.deadline_ms.div_ceil(tick_ms) + 1);
    let fail = |e: wasmtime::Error| Error::Instantiate {
        plugin: plugin.id.short().to_string(),
        reason: format!("{e:#}"),
    };
    let bound = match &plugin.compiled.pre {
        PluginPre::Extractor(pre) => Bound::Extractor(pre.instantiate(&mut store).map_err(fail)?),
        PluginPre::Model(pre) => Bound::Model(pre.instantiate(&mut store).map_err(fail)?),
        PluginPre::Operator(pre) => {
            // The resource is created by `initialise` (the fallible `open` constructor).
            Bound::Operator(pre.instantiate(&mut store).map_err(fail)?, None)
        }
    };
    Ok((store, bound))
}

fn classify(e: &wasmtime::Error, denied_memory: bool, panic: Option<String>) -> TrapKind {
    use wasmtime::Trap;
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => TrapKind::OutOfFuel,
        Some(Trap::Interrupt) => TrapKind::Timeout,
        Some(Trap::StackOverflow) => TrapKind::StackOverflow,
        _ if denied_memory => TrapKind::OutOfMemory,
        Some(Trap::UnreachableCodeReached) => match panic {
            Some(message) => TrapKind::Panic(message),
            None => TrapKind::Other("unreachable code reached".into()),
        },
        Some(trap) => TrapKind::Other(trap.to_string()),
        None => TrapKind::Other(format!("{e:#}")),
    }
}
