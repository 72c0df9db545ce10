//! Adds `limits` to `tenants`: the admin's per-tenant overrides of the server's ceilings on
//! sandbox limits and grants (a JSON document; null means the server's defaults).

use super::add_column;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            "tenants",
            ColumnDef::new(Tenants::Limits).text().null().to_owned(),
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Nullable: leaving the column is harmless (SQLite cannot always drop columns).
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Limits,
}
