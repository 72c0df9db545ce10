//! # weir-stream
//!
//! The stream core, free of I/O: event-time windows (tumbling, sliding, session),
//! watermarks with bounded out-of-orderness combined across partitions (with an idle
//! timeout), allowed lateness with a late side output, built-in aggregates, and keyed state
//! behind the [`StateStore`] trait. Sources, sinks and durable stores live in the server;
//! tests drive everything here in memory, with processing time passed in explicitly.

pub mod aggregate;
pub mod checkpoint;
pub mod metrics;
pub mod output;
pub mod parse;
pub mod pipeline;
pub mod spec;
pub mod state;
pub mod training;
pub mod watermark;
pub mod window;

pub use aggregate::{Agg, AggKind};
pub use state::{EntryChange, MemoryStateStore, StateScope, StateStore, TrackedState};
pub use watermark::Watermarks;
pub use window::{Fired, Lateness, Pane, WindowKind, WindowSpan, Windower};

/// The hash map of the per-event paths (window keys and panes, keyed state, key ownership):
/// foldhash, seeded per map, instead of SipHash. Keys come from users' events, so the seed
/// stays random; a tenant that crafts colliding keys slows only its own pipeline.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Where a record came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SourcePos {
    /// Partition of the source topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}
