//! `model_snapshots`: trained model states, each pointing at the snapshot it was trained from.

use sea_orm::entity::prelude::*;

/// One model snapshot.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "model_snapshots")]
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
    /// The snapshot this one was trained from.
    pub parent_id: Option<i64>,
    /// The binary payload (`LONGBLOB` on MySQL).
    #[sea_orm(column_type = "Blob")]
    pub bytes: Vec<u8>,
    /// First offset of the training window.
    pub from_offset: Option<i64>,
    /// Last offset of the training window.
    pub to_offset: Option<i64>,
    /// Training metrics, JSON text.
    #[sea_orm(column_type = "Text")]
    pub metrics: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
