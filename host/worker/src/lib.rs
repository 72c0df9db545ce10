//! # weir-worker
//!
//! The one worker loop that every entry point runs (`weir up`, `weir run`, `weir serve`, the
//! benchmarks and the tests): Kafka in ([`kafka::Consumer`], with the gap checks of
//! [`gaps`]), the stream core's [`Pipeline`](weir_stream::pipeline::Pipeline) in the middle,
//! Kafka out ([`kafka::Producer`]), and checkpoints committed off the hot thread: to a
//! database, effectively once, or as Kafka offsets, at least once ([`Durability`]).

pub mod gaps;
pub mod kafka;

mod checkpointer;
pub mod share;
mod sink;
mod source;
mod worker;

pub use checkpointer::{CommitStats, Durability};
pub use share::{CpuShare, TenantShare};
pub use sink::produce_outputs;
pub use worker::{DEFAULT_FIRE_BUDGET, Progress, WorkerOptions, WorkerReport, spec_topics};

use weir_store::StoreError;
use weir_stream::pipeline::PipelineError;

/// Why a worker stopped with an error, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Input is missing from the source and the spec says a gap stops the pipeline.
    #[error("{0}")]
    Gap(String),
    /// Another worker owns a partition now: its owner epoch fenced this worker's checkpoint.
    /// Nothing of that checkpoint was written; the owner redoes the work.
    #[error("{0}")]
    Fenced(String),
    /// The pipeline failed as a whole (a plugin or the spec, not one record: those become
    /// dead letters).
    #[error("{0}")]
    Pipeline(String),
    /// Kafka, the database or the machine.
    #[error("{0}")]
    External(String),
}

impl From<anyhow::Error> for WorkerError {
    fn from(e: anyhow::Error) -> Self {
        let text = format!("{e:#}");
        if e.chain()
            .any(|c| c.downcast_ref::<gaps::GapError>().is_some())
        {
            WorkerError::Gap(text)
        } else if e.chain().any(|c| {
            matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::Fenced { .. })
            )
        }) || text.contains("is fenced by a newer owner")
        {
            WorkerError::Fenced(text)
        } else if e
            .chain()
            .any(|c| c.downcast_ref::<PipelineError>().is_some())
        {
            WorkerError::Pipeline(text)
        } else {
            WorkerError::External(text)
        }
    }
}

/// Runs a worker until it is stopped, or until its input is consumed (`until_end`,
/// `max_records`). See [`WorkerOptions`].
pub fn run(
    spec: &weir_stream::spec::PipelineSpec,
    pipeline: weir_stream::pipeline::Pipeline,
    opts: WorkerOptions,
) -> Result<WorkerReport, WorkerError> {
    worker::run(spec, pipeline, opts).map_err(WorkerError::from)
}
