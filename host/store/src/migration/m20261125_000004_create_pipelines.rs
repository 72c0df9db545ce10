//! Creates `pipelines`.

use super::{NAME_LEN, big, id, string, text};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Pipelines::Table)
                    .if_not_exists()
                    .col(id(Pipelines::Id))
                    .col(big(Pipelines::TenantId))
                    .col(string(Pipelines::Name, NAME_LEN))
                    .col(text(Pipelines::Spec))
                    .col(string(Pipelines::Status, 32))
                    .col(big(Pipelines::CreatedAt))
                    .index(
                        Index::create()
                            .name("ux_pipelines_tenant_name")
                            .unique()
                            .col(Pipelines::TenantId)
                            .col(Pipelines::Name),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Pipelines::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Pipelines {
    Table,
    Id,
    TenantId,
    Name,
    Spec,
    Status,
    CreatedAt,
}
