//! `deployments`: history of which plugin ran in which stage of a pipeline, and where (partition
//! and offset) the change took effect.

use sea_orm::entity::prelude::*;

/// One deployment event.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deployments")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The pipeline name.
    pub pipeline: String,
    /// The pipeline stage.
    pub stage: String,
    /// Hex SHA-256 of the plugin.
    pub plugin_sha256: String,
    /// Human-readable version label.
    pub version_label: String,
    /// Who made the change.
    pub actor: String,
    /// When, UTC ms.
    pub at_ms: i64,
    /// The partition where the change took effect, if known.
    pub partition: Option<i32>,
    /// The offset where the change took effect, if known.
    pub offset: Option<i64>,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
