//! `window_results`: one row per (pipeline, key, window start); a re-fired window overwrites.

use sea_orm::entity::prelude::*;

/// The output of one closed window.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "window_results")]
pub struct Model {
    /// The pipeline name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub pipeline: String,
    /// The window key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// Window start, ms (inclusive).
    #[sea_orm(primary_key, auto_increment = false)]
    pub window_start: i64,
    /// Window end, ms (exclusive).
    pub window_end: i64,
    /// The partition that produced the window.
    pub partition: i32,
    /// The operator output, JSON text.
    #[sea_orm(column_type = "Text")]
    pub output: String,
    /// Version label.
    pub version: String,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
