//! The `weir` server library: the HTTP API and its control plane, the wiring that builds a
//! spec's stages, and job 3 (the worker loop and Kafka I/O are `weir-worker`'s). The `weir`
//! binary (`src/main.rs`) adds the CLI, the main job and the benchmarks.

pub mod api;
pub mod job3;
pub mod run;
