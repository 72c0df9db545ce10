//! # weir-engine
//!
//! The sandbox that runs weir's user plugins: WebAssembly components built against the
//! `weir:operator@0.1.0` contract in `wit/`. It knows nothing of Kafka or SQL; the stream
//! core and the server drive it with columnar batches.
//!
//! What it does:
//! - **Validates** a component before compiling it ([`inspect`]): it must be a component
//!   (not a core module), export exactly one supported weir world at a supported version, and
//!   import only what is on the allow-list. WASI filesystem, sockets and HTTP are never
//!   linked; clocks only when the manifest grants them.
//! - **Compiles once** per sha256 and keeps the `InstancePre` ([`Engine::load`]); an optional
//!   on-disk cache of precompiled artifacts makes a restart cheap.
//! - **Enforces limits as data** ([`Limits`]): memory, fuel, a wall-clock deadline (epochs),
//!   tables, instances, output size and log volume. A trap, timeout or out-of-memory becomes
//!   a typed [`Error`] naming the plugin and the reason; the instance is rebuilt on the next
//!   call. The host never panics on plugin behaviour.
//! - **Hot-swaps** ([`Slot`]): a stage's current deployment is an `ArcSwap` pointer; each
//!   worker's [`Runner`] notices the change between batches and moves to the new version.
//!   Calls in flight finish on the old one, and rollback is a pointer store.

mod engine;
mod error;
mod host;
mod instance;
mod manifest;
mod slot;
mod validate;

pub mod bindings;

pub use bindings::{EventBatch, FeatureBatch, LogLevel, PluginError, WindowBatch};
pub use engine::{Engine, EngineOptions, Plugin, PluginId};
pub use error::{Error, Fault, Result, TrapKind};
pub use host::{KeyedState, LogBuffer, LogLine, MemoryState, StateValues};
pub use instance::Instance;
pub use manifest::{Grants, Limits, Manifest};
pub use slot::{Deployment, Runner, Slot, VersionId};
pub use validate::{ComponentInfo, PluginKind, SUPPORTED_VERSIONS, ValidationError, inspect};
