//! `pipelines`: pipeline specs of a tenant, unique by (tenant, name).

use sea_orm::entity::prelude::*;

/// A pipeline definition.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pipelines")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The owning tenant.
    pub tenant_id: i64,
    /// Name, unique per tenant.
    pub name: String,
    /// The pipeline spec, text.
    #[sea_orm(column_type = "Text")]
    pub spec: String,
    /// Lifecycle status.
    pub status: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// Why it failed, when its status is `failed`.
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
