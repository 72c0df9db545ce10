//! `gaps`: stretches of a pipeline's input that were lost or skipped, one row each.

use sea_orm::entity::prelude::*;

/// One recorded gap.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "gaps")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The pipeline name.
    pub pipeline: String,
    /// The source topic.
    pub topic: String,
    /// The source partition.
    pub partition: i32,
    /// The first stream position not processed.
    pub from_offset: i64,
    /// The stream position processing resumed at.
    pub to_offset: i64,
    /// Records lost, when the broker can tell.
    pub records: Option<i64>,
    /// Why: `retention`, `beyond_end`, `source_replaced`, `broker_restarted`.
    pub reason: String,
    /// What was seen, in words.
    #[sea_orm(column_type = "Text")]
    pub detail: String,
    /// When it was recorded, UTC ms.
    pub at_ms: i64,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
