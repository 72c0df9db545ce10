//! The `weir` server library: Kafka I/O (embedded broker, consumer, producer) and the wiring
//! that runs a pipeline spec over Kafka. The `weir` binary (`src/main.rs`) adds the CLI, the
//! main job and the benchmarks.

pub mod api;
pub mod durable;
pub mod gaps;
pub mod job3;
pub mod kafka;
pub mod run;
pub mod source;
