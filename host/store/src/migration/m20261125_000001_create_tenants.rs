//! Creates `tenants`.

use super::{NAME_LEN, big, id, string};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .if_not_exists()
                    .col(id(Tenants::Id))
                    .col(string(Tenants::Name, NAME_LEN))
                    .col(big(Tenants::CreatedAt))
                    .index(
                        Index::create()
                            .name("ux_tenants_name")
                            .unique()
                            .col(Tenants::Name),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tenants::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    CreatedAt,
}
