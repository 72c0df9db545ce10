//! `training_runs`: every training decision of a pipeline stage (promoted, rejected or
//! failed), pointing at the candidate's snapshot and at the champion's.

use sea_orm::entity::prelude::*;

/// One training decision.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "training_runs")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The pipeline name.
    pub pipeline: String,
    /// The pipeline stage.
    pub stage: String,
    /// The candidate's snapshot in `model_snapshots` (none when the fit failed).
    pub snapshot_id: Option<i64>,
    /// The champion's snapshot, when it was itself trained (its parent).
    pub parent_snapshot_id: Option<i64>,
    /// `promoted`, `rejected` or `failed`.
    pub outcome: String,
    /// `first`, `schedule`, `timer` or `drift`.
    pub trigger: String,
    /// The candidate's version id (empty when the fit failed).
    pub version: String,
    /// The champion's version id.
    pub champion_version: String,
    /// Hex SHA-256 of the plugin serving the model.
    pub plugin_sha256: String,
    /// The validation metric.
    pub metric: String,
    /// The candidate's held-out score.
    pub challenger_score: Option<f64>,
    /// The champion's held-out score.
    pub champion_score: Option<f64>,
    /// The whole decision, JSON text.
    #[sea_orm(column_type = "Text")]
    pub detail: String,
    /// When it was decided, UTC ms.
    pub at_ms: i64,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
