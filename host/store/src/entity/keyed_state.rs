//! `keyed_state`: operator state of a partition, by namespace and key.

use sea_orm::entity::prelude::*;

/// One state value.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "keyed_state")]
pub struct Model {
    /// The pipeline name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub pipeline: String,
    /// The partition.
    #[sea_orm(primary_key, auto_increment = false)]
    pub partition: i32,
    /// The state namespace.
    #[sea_orm(primary_key, auto_increment = false)]
    pub namespace: String,
    /// The key within the namespace.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// The value bytes (`LONGBLOB` on MySQL).
    #[sea_orm(column_type = "Blob")]
    pub value: Vec<u8>,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
