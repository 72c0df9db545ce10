//! Errors at the engine boundary. Each one says who is at fault ([`Fault`]), so the stream
//! layer can route a plugin's failure to the dead-letter output and keep going, and the API
//! can answer 422 for a bad upload.

use crate::bindings::PluginError;
use crate::validate::ValidationError;

/// Result of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The plugin (its bytes, its config, or its behaviour).
    Plugin,
    /// The host itself.
    Internal,
}

/// Why a call into a plugin was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrapKind {
    /// The wall-clock deadline (epoch) passed.
    Timeout,
    /// The call used up its fuel (instruction budget).
    OutOfFuel,
    /// The plugin asked for more memory than its cap.
    OutOfMemory,
    /// The wasm stack overflowed (for example unbounded recursion).
    StackOverflow,
    /// The plugin panicked; the message is its last line on stderr, if any.
    Panic(String),
    /// Any other trap.
    Other(String),
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapKind::Timeout => f.write_str("deadline exceeded"),
            TrapKind::OutOfFuel => f.write_str("fuel exhausted"),
            TrapKind::OutOfMemory => f.write_str("memory limit exceeded"),
            TrapKind::StackOverflow => f.write_str("stack overflow"),
            TrapKind::Panic(m) if m.is_empty() => f.write_str("panicked"),
            TrapKind::Panic(m) => write!(f, "panicked: {m}"),
            TrapKind::Other(m) => write!(f, "trapped: {m}"),
        }
    }
}

/// An engine error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not an acceptable plugin (rejected before compiling).
    #[error("plugin rejected: {0}")]
    Invalid(#[from] ValidationError),
    /// The component passed the checks but wasmtime could not compile or link it.
    #[error("plugin {plugin} could not be compiled: {reason}")]
    Compile {
        /// Plugin id (sha256 prefix).
        plugin: String,
        /// Why.
        reason: String,
    },
    /// Instantiating the plugin failed (for example its initial memory exceeds the cap).
    #[error("plugin {plugin} could not be instantiated: {reason}")]
    Instantiate {
        /// Plugin id.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The plugin trapped, timed out or ran out of memory during `func`. Its instance is
    /// rebuilt before the next call.
    #[error("plugin {plugin} stopped in {func}: {kind}")]
    Trap {
        /// Plugin id.
        plugin: String,
        /// The exported function that was running.
        func: &'static str,
        /// Why it stopped.
        kind: TrapKind,
    },
    /// The plugin returned its own error.
    #[error("plugin {plugin} failed in {func}: {error}")]
    Plugin {
        /// Plugin id.
        plugin: String,
        /// The exported function.
        func: &'static str,
        /// The plugin's error.
        error: PluginError,
    },
    /// The plugin returned a result that breaks the contract (wrong row count, malformed
    /// batch) or exceeds the output cap.
    #[error("plugin {plugin} returned a bad result from {func}: {reason}")]
    BadOutput {
        /// Plugin id.
        plugin: String,
        /// The exported function.
        func: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A function of another world was called (for example `predict` on an extractor).
    #[error("plugin {plugin} is a {kind} and has no {func}")]
    WrongKind {
        /// Plugin id.
        plugin: String,
        /// Its kind.
        kind: &'static str,
        /// The function asked for.
        func: &'static str,
    },
    /// A host-side failure (I/O on the artifact cache, engine setup).
    #[error("engine error: {0}")]
    Internal(String),
}

impl Error {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Internal(_) => Fault::Internal,
            _ => Fault::Plugin,
        }
    }

    /// True when the error is a trap (timeout, fuel, memory, panic, ...).
    pub fn is_trap(&self) -> bool {
        matches!(self, Error::Trap { .. })
    }

    /// The trap kind, if this is a trap.
    pub fn trap_kind(&self) -> Option<&TrapKind> {
        match self {
            Error::Trap { kind, .. } => Some(kind),
            _ => None,
        }
    }
}
