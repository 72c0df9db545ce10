//! The engine: one wasmtime `Engine` and `Linker`, the compiled-plugin cache, and the epoch
//! ticker that enforces wall-clock deadlines.

use crate::bindings::{
    extractor::ExtractorPluginPre, model::ModelPluginPre, operator::OperatorPluginPre,
};
use crate::error::{Error, Result};
use crate::host::HostState;
use crate::manifest::Manifest;
use crate::validate::{ComponentInfo, PluginKind, inspect};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};

/// How the engine is built.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Meter fuel: a deterministic instruction budget per call (on by default). Measured on
    /// job 1 it costs about 3%; the epoch deadline bounds wall-clock time either way.
    pub fuel: bool,
    /// Use the pooling instance allocator (faster instantiation, reserves address space).
    pub pooling: bool,
    /// Directory for precompiled artifacts (`<sha256>-<engine hash>.cwasm`), if any.
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the granularity of wall-clock deadlines.
    pub epoch_tick: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            fuel: true,
            pooling: false,
            cache_dir: None,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

/// A plugin's id: the hex sha256 of its bytes.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PluginId(pub String);

impl PluginId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        PluginId(hex::encode(Sha256::digest(bytes)))
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl std::fmt::Display for PluginId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) enum PluginPre {
    Extractor(ExtractorPluginPre<HostState>),
    Model(ModelPluginPre<HostState>),
    Operator(OperatorPluginPre<HostState>),
}

pub(crate) struct Compiled {
    pub(crate) info: ComponentInfo,
    pub(crate) pre: PluginPre,
    pub(crate) size: usize,
    pub(crate) compile_time: Duration,
    pub(crate) from_disk_cache: bool,
}

/// A validated, compiled and pre-linked plugin with its manifest. Cheap to clone behind an
/// `Arc`; instantiating it takes microseconds.
pub struct Plugin {
    pub(crate) id: PluginId,
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) manifest: Manifest,
    pub(crate) engine: Engine,
}

impl Plugin {
    /// The sha256 of the plugin's bytes.
    pub fn id(&self) -> &PluginId {
        &self.id
    }
    /// Extractor, model or operator.
    pub fn kind(&self) -> PluginKind {
        self.compiled.info.kind
    }
    /// What validation found (world version, imports).
    pub fn info(&self) -> &ComponentInfo {
        &self.compiled.info
    }
    /// The limits and grants it runs under.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.compiled.size
    }
    /// Time spent compiling (or loading the precompiled artifact).
    pub fn compile_time(&self) -> Duration {
        self.compiled.compile_time
    }
    /// True if the artifact came from the on-disk cache.
    pub fn from_disk_cache(&self) -> bool {
        self.compiled.from_disk_cache
    }
    /// The engine it belongs to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Diagnostics for benchmarks: times `n` bare instantiations from the `InstancePre`
    /// (a fresh store each, no `init` call) and returns each duration.
    pub fn time_instantiate(&self, n: usize) -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let logs = Arc::new(crate::host::LogBuffer::new(&self.manifest.limits, 16));
            let state = Box::new(crate::host::MemoryState::default());
            let mut store = wasmtime::Store::new(
                &self.engine.inner.wasmtime,
                HostState::new(&self.manifest.limits, logs, state),
            );
            store.limiter(|s| &mut s.limiter);
            store.set_epoch_deadline(u64::MAX / 2);
            if self.engine.inner.options.fuel {
                store
                    .set_fuel(u64::MAX / 2)
                    .map_err(|e| Error::Internal(format!("{e:#}")))?;
            }
            let t = Instant::now();
            let ok = match &self.compiled.pre {
                PluginPre::Extractor(p) => p.instantiate(&mut store).map(drop),
                PluginPre::Model(p) => p.instantiate(&mut store).map(drop),
                PluginPre::Operator(p) => p.instantiate(&mut store).map(drop),
            };
            out.push(t.elapsed());
            ok.map_err(|e| Error::Instantiate {
                plugin: self.id.short().to_string(),
                reason: format!("{e:#}"),
            })?;
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.id)
            .field("kind", &self.kind())
            .finish()
    }
}

/// The weir Wasm engine. Clone it freely: clones share everything.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) wasmtime: wasmtime::Engine,
    linker: Linker<HostState>,
    pub(crate) options: EngineOptions,
    compiled: Mutex<HashMap<PluginId, Arc<Compiled>>>,
    /// Real compilations so far (not cache hits).
    compilations: std::sync::atomic::AtomicU64,
    compat_hash: String,
    stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// Builds an engine.
    pub fn new(options: EngineOptions) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(options.fuel);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // For profilers: `WEIR_PERFMAP=1` writes /tmp/perf-PID.map, so `perf report` names
        // the plugins' compiled functions instead of showing bare addresses.
        if std::env::var_os("WEIR_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if options.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_component_instances(256)
                .total_core_instances(1024)
                .total_memories(512)
                .total_tables(512)
                .max_memory_size(1 << 30);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let wasmtime =
            wasmtime::Engine::new(&config).map_err(|e| Error::Internal(format!("{e:#}")))?;

        let mut linker = Linker::<HostState>::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(internal)?;
        crate::bindings::operator::OperatorPlugin::add_to_linker::<
            HostState,
            wasmtime::component::HasSelf<HostState>,
        >(&mut linker, |s| s)
        .map_err(internal)?;

        let mut h = std::collections::hash_map::DefaultHasher::new();
        wasmtime.precompile_compatibility_hash().hash(&mut h);
        let compat_hash = format!("{:016x}", h.finish());

        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = wasmtime.clone();
            let stop = stop.clone();
            let tick = options.epoch_tick;
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start the epoch thread: {e}")))?;
        }
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                linker,
                options,
                compiled: Mutex::new(HashMap::new()),
                compilations: std::sync::atomic::AtomicU64::new(0),
                compat_hash,
                stop,
            }),
        })
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Validates, compiles (once per sha256) and pre-links a plugin.
    ///
    /// Validation runs first, so a core module, a foreign world, an unsupported version or a
    /// forbidden import is refused before any compilation. Compiling takes tens of
    /// milliseconds: call this off the hot path.
    pub fn load(&self, bytes: &[u8], manifest: Manifest) -> Result<Arc<Plugin>> {
        self.load_with(bytes, manifest, true)
    }

    /// [`Engine::load`] that compiles even when the plugin is cached (in memory or on disk),
    /// and caches the result. For uploads: how long one takes, and the `compile_ms` it
    /// reports, then say nothing about what anyone else uploaded before.
    pub fn load_fresh(&self, bytes: &[u8], manifest: Manifest) -> Result<Arc<Plugin>> {
        self.load_with(bytes, manifest, false)
    }

    fn load_with(&self, bytes: &[u8], manifest: Manifest, cached: bool) -> Result<Arc<Plugin>> {
        let info = inspect(bytes, &manifest.grants)?;
        let id = PluginId::of(bytes);
        let hit = cached
            .then(|| self.lock_compiled().get(&id).cloned())
            .flatten();
        let compiled = match hit {
            Some(c) => c,
            None => {
                let c = Arc::new(self.compile(&id, bytes, info, cached)?);
                self.lock_compiled().insert(id.clone(), c.clone());
                c
            }
        };
        Ok(Arc::new(Plugin {
            id,
            compiled,
            manifest,
            engine: self.clone(),
        }))
    }

    /// How many times a plugin was really compiled (cache hits not counted).
    pub fn compilations(&self) -> u64 {
        self.inner.compilations.load(Ordering::Relaxed)
    }

    /// Whether a plugin with this id is compiled and cached in memory.
    pub fn is_cached(&self, id: &PluginId) -> bool {
        self.lock_compiled().contains_key(id)
    }

    /// Drops a compiled plugin from the in-memory cache.
    pub fn evict(&self, id: &PluginId) {
        self.lock_compiled().remove(id);
    }

    fn lock_compiled(&self) -> std::sync::MutexGuard<'_, HashMap<PluginId, Arc<Compiled>>> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn compile(
        &self,
        id: &PluginId,
        bytes: &[u8],
        info: ComponentInfo,
        from_disk: bool,
    ) -> Result<Compiled> {
        let started = Instant::now();
        let compile_err = |e: wasmtime::Error| Error::Compile {
            plugin: id.short().to_string(),
            reason: format!("{e:#}"),
        };
        let disk = self
            .inner
            .options
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.cwasm", id.0, self.inner.compat_hash)));
        let mut from_disk_cache = false;
        let component = match disk.as_ref().filter(|p| from_disk && p.exists()) {
            Some(path) => match deserialize_artifact(&self.inner.wasmtime, path) {
                Ok(c) => {
                    from_disk_cache = true;
                    c
                }
                Err(e) => {
                    tracing::warn!(
                        plugin = id.short(),
                        "ignoring unusable cached artifact: {e:#}"
                    );
                    Component::new(&self.inner.wasmtime, bytes).map_err(compile_err)?
                }
            },
            None => Component::new(&self.inner.wasmtime, bytes).map_err(compile_err)?,
        };
        if let (Some(path), false) = (disk.as_ref(), from_disk_cache)
            && let Err(e) = write_artifact(&component, path)
        {
            tracing::warn!(plugin = id.short(), "cannot write the artifact cache: {e}");
        }
        if !from_disk_cache {
            self.inner.compilations.fetch_add(1, Ordering::Relaxed);
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(compile_err)?;
        let pre = match info.kind {
            PluginKind::Extractor => {
                PluginPre::Extractor(ExtractorPluginPre::new(pre).map_err(compile_err)?)
            }
            PluginKind::Model => PluginPre::Model(ModelPluginPre::new(pre).map_err(compile_err)?),
            PluginKind::Operator => {
                PluginPre::Operator(OperatorPluginPre::new(pre).map_err(compile_err)?)
            }
        };
        Ok(Compiled {
            info,
            pre,
            size: bytes.len(),
            compile_time: started.elapsed(),
            from_disk_cache,
        })
    }
}

fn internal(e: wasmtime::Error) -> Error {
    Error::Internal(format!("{e:#}"))
}

fn write_artifact(component: &Component, path: &std::path::Path) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

#[allow(unsafe_code)]
fn deserialize_artifact(
    engine: &wasmtime::Engine,
    path: &std::path::Path,
) -> wasmtime::Result<Component> {
    // SAFETY: the file is one this engine wrote with `Component::serialize` into the
    // operator's own cache directory, named by the plugin's sha256 and by this engine's
    // precompile-compatibility hash. wasmtime checks the header and the engine
    // compatibility; the trust assumption is that nobody else writes into the cache dir.
    unsafe { Component::deserialize_file(engine, path) }
}
