//! `predictions`: one row per scored input record, keyed by its source position so that a
//! replayed batch overwrites instead of duplicating.

use sea_orm::entity::prelude::*;

/// A prediction for the record at (pipeline, partition, offset).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "predictions")]
pub struct Model {
    /// The pipeline name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub pipeline: String,
    /// The source partition.
    #[sea_orm(primary_key, auto_increment = false)]
    pub partition: i32,
    /// The source offset.
    #[sea_orm(primary_key, auto_increment = false)]
    pub offset: i64,
    /// The record key.
    pub key: String,
    /// Event time, ms.
    pub ts: i64,
    /// The score, if the model produces one.
    pub score: Option<f64>,
    /// The model output, JSON text.
    #[sea_orm(column_type = "Text")]
    pub output: String,
    /// Version label of the model.
    pub model_version: String,
    /// Version label of the feature extractor.
    pub extractor_version: String,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
