//! # weir-workload
//!
//! The shared real-time ML workload (`shared/bench/WORKLOAD.md`), for weir's main job,
//! tests and benchmarks:
//! - [`Generator`]: a Rust port of `gen_events.py` — the same key distribution (Zipf 1.1 over
//!   10,000 keys), event rate (≈10,000 events per event-time second), lateness (5% of events
//!   moved back 1..2000 ms), feature distributions, per-key offset on x0, and label drift at
//!   N/2. It is statistically equivalent, not bit-identical, to the Python reference; use
//!   [`read_jsonl`] on the reference's files where exact figures matter.
//! - [`Models`]: the fixed event and window models of `model.json` (embedded).
//! - [`native`]: native Rust reference implementations of jobs 1–3.

pub mod native;

mod generator;
mod jsonl;
mod models;

pub use generator::{Generator, N_KEYS, T0_MS, true_logit};
pub use jsonl::{JsonlError, parse_line, read_jsonl, to_json_line};
pub use models::{EventModel, Models, OnlineModel, WindowModel};

/// One event of the workload.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// `u<k>`, k in 0..10,000.
    pub key: String,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// The 8 features.
    pub x: [f64; 8],
    /// 0 or 1.
    pub label: u8,
}
