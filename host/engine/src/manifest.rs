//! Per-plugin limits and grants, as data (in the spirit of extism's manifest). A manifest
//! travels with a deployment; the engine applies it to every store and every call.

use serde::{Deserialize, Serialize};

/// What a plugin may use and how much.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    /// Resource limits.
    pub limits: Limits,
    /// Capabilities beyond the default (none).
    pub grants: Grants,
}

/// Capabilities a plugin may be granted. Everything is off by default. Filesystem, network
/// and HTTP access are never grantable: weir plugins compute, the host does I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// May import `wasi:clocks/*` (wall clock and monotonic clock).
    pub clocks: bool,
}

/// Resource limits of one plugin instance.
///
/// The defaults are sized for weir's workloads (batches of up to a few thousand events) and
/// anchored on public practice: Redpanda data transforms get 2 MiB of memory and 3 s per
/// record; Shopify Functions get 11M instructions per run. weir calls once per batch, so the
/// budgets are per call and scale with the batch: fuel is `fuel_per_call + fuel_per_row *
/// rows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap in bytes (all memories of the instance together).
    pub memory_bytes: usize,
    /// Fixed fuel (≈ wasm instructions) per call; used only when the engine meters fuel.
    pub fuel_per_call: u64,
    /// Extra fuel per event or row in the call's batch.
    pub fuel_per_row: u64,
    /// Wall-clock deadline per call, in milliseconds (enforced with epochs).
    pub deadline_ms: u64,
    /// Maximum elements in any table.
    pub table_elements: usize,
    /// Maximum number of tables.
    pub tables: usize,
    /// Maximum number of core instances.
    pub instances: usize,
    /// Maximum number of linear memories.
    pub memories: usize,
    /// Maximum size in bytes of one call's output, as the host measures it.
    pub output_bytes: usize,
    /// Maximum log lines kept per call (stdout, stderr and `log`); the rest are counted as
    /// dropped.
    pub log_lines_per_call: usize,
    /// Log lines longer than this are truncated.
    pub log_line_bytes: usize,
    /// Maximum size of one keyed-state value.
    pub state_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            fuel_per_call: 10_000_000,
            fuel_per_row: 100_000,
            deadline_ms: 1_000,
            table_elements: 20_000,
            tables: 10,
            instances: 20,
            memories: 2,
            output_bytes: 32 << 20,
            log_lines_per_call: 64,
            log_line_bytes: 1_024,
            state_value_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Fuel budget for a call over `rows` rows.
    pub fn fuel_for(&self, rows: usize) -> u64 {
        self.fuel_per_call
            .saturating_add(self.fuel_per_row.saturating_mul(rows as u64))
    }
}
