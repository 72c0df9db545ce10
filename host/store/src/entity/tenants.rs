//! `tenants`: one row per tenant; every other tenant-scoped row points here.

use sea_orm::entity::prelude::*;

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Name, unique within its scope.
    #[sea_orm(unique)]
    pub name: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// The admin's overrides of the server's ceilings (JSON), if any.
    #[sea_orm(column_type = "Text", nullable)]
    pub limits: Option<String>,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
