//! `plugins`: uploaded Wasm components, one row per (tenant, name, version).

use sea_orm::entity::prelude::*;

/// An uploaded plugin with its component bytes.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "plugins")]
pub struct Model {
    /// Primary key, assigned by the database.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The owning tenant.
    pub tenant_id: i64,
    /// Name, unique per tenant.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// The WIT world the component implements.
    pub world: String,
    /// Size of the component, bytes.
    pub size: i64,
    /// The plugin manifest, JSON text.
    #[sea_orm(column_type = "Text")]
    pub manifest: String,
    /// The binary payload (`LONGBLOB` on MySQL).
    #[sea_orm(column_type = "Blob")]
    pub bytes: Vec<u8>,
    /// Creation time, UTC ms.
    pub created_at: i64,
}

/// Relations: none; references between tables are by value, not foreign key.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
