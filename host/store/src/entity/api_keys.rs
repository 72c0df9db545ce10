//! `api_keys`: API keys of a tenant, stored as the hex SHA-256 of the key.

use sea_orm::entity::prelude::*;

/// An API key (only its hash is stored).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The owning tenant.
    pub tenant_id: i64,
    /// Hex SHA-256 of the key.
    #[sea_orm(unique)]
    pub key_hash: String,
    /// Free-form label.
    pub label: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// Whether the key was revoked.
    pub revoked: bool,
    /// When the key last authenticated a request (UTC ms, to the minute), if ever.
    pub last_used_at: Option<i64>,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
