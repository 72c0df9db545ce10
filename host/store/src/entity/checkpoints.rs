//! `checkpoints`: the committed source position of each (pipeline, partition), with the epoch of
//! its current owner for fencing.

use sea_orm::entity::prelude::*;

/// The checkpoint of one partition.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "checkpoints")]
pub struct Model {
    /// The pipeline name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub pipeline: String,
    /// The partition.
    #[sea_orm(primary_key, auto_increment = false)]
    pub partition: i32,
    /// The first offset not yet committed.
    pub next_offset: i64,
    /// The committed watermark.
    pub watermark: i64,
    /// Epoch of the current owner; commits must present it.
    pub owner_epoch: i64,
    /// Number of commits applied.
    pub commits: i64,
    /// Time of the last claim or commit, UTC ms.
    pub updated_at: i64,
    /// The Kafka cluster the position belongs to, when known.
    pub cluster_id: Option<String>,
    /// The topic's id (its incarnation) the position belongs to, when the broker tells.
    pub topic_id: Option<String>,
    /// Stream position minus broker offset: 0 until the source log was replaced.
    pub offset_base: i64,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
