//! Creates `api_keys`.

use super::{NAME_LEN, SHA_LEN, big, ensure_index, id, string};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(id(ApiKeys::Id))
                    .col(big(ApiKeys::TenantId))
                    .col(string(ApiKeys::KeyHash, SHA_LEN))
                    .col(string(ApiKeys::Label, NAME_LEN))
                    .col(big(ApiKeys::CreatedAt))
                    .col(
                        ColumnDef::new(ApiKeys::Revoked)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .index(
                        Index::create()
                            .name("ux_api_keys_key_hash")
                            .unique()
                            .col(ApiKeys::KeyHash),
                    )
                    .to_owned(),
            )
            .await?;
        ensure_index(
            manager,
            "api_keys",
            Index::create()
                .name("ix_api_keys_tenant")
                .table(ApiKeys::Table)
                .col(ApiKeys::TenantId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiKeys::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    KeyHash,
    Label,
    CreatedAt,
    Revoked,
}
