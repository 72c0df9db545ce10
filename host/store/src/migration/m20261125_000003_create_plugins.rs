//! Creates `plugins`.

use super::{NAME_LEN, SHA_LEN, big, id, long_blob, string, text};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Plugins::Table)
                    .if_not_exists()
                    .col(id(Plugins::Id))
                    .col(big(Plugins::TenantId))
                    .col(string(Plugins::Name, NAME_LEN))
                    .col(string(Plugins::Version, NAME_LEN))
                    .col(string(Plugins::Sha256, SHA_LEN))
                    .col(string(Plugins::World, NAME_LEN))
                    .col(big(Plugins::Size))
                    .col(text(Plugins::Manifest))
                    .col(long_blob(manager, Plugins::Bytes))
                    .col(big(Plugins::CreatedAt))
                    .index(
                        Index::create()
                            .name("ux_plugins_tenant_name_version")
                            .unique()
                            .col(Plugins::TenantId)
                            .col(Plugins::Name)
                            .col(Plugins::Version),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Plugins::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Plugins {
    Table,
    Id,
    TenantId,
    Name,
    Version,
    Sha256,
    World,
    Size,
    Manifest,
    Bytes,
    CreatedAt,
}
