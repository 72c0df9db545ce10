//! sea-orm entities, one module per table. Timestamps are UTC milliseconds (`i64`), JSON columns
//! are text, and large binary columns are `LONGBLOB` on MySQL (see the migrations).

pub mod api_keys;
pub mod checkpoints;
pub mod deployments;
pub mod gaps;
pub mod keyed_state;
pub mod model_snapshots;
pub mod pipelines;
pub mod plugins;
pub mod predictions;
pub mod tenants;
pub mod training_runs;
pub mod window_results;
