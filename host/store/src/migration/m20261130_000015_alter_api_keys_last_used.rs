//! Adds `last_used_at` to `api_keys`: when a key last authenticated a request (UTC ms, to
//! the minute; null if never).

use super::add_column;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            "api_keys",
            ColumnDef::new(ApiKeys::LastUsedAt)
                .big_integer()
                .null()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Nullable: leaving the column is harmless (SQLite cannot always drop columns).
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    LastUsedAt,
}
