//! Creates `deployments`.

use super::{NAME_LEN, SHA_LEN, big, big_null, ensure_index, id, string};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Deployments::Table)
                    .if_not_exists()
                    .col(id(Deployments::Id))
                    .col(string(Deployments::Pipeline, NAME_LEN))
                    .col(string(Deployments::Stage, NAME_LEN))
                    .col(string(Deployments::PluginSha256, SHA_LEN))
                    .col(string(Deployments::VersionLabel, NAME_LEN))
                    .col(string(Deployments::Actor, NAME_LEN))
                    .col(big(Deployments::AtMs))
                    .col(ColumnDef::new(Deployments::Partition).integer().null())
                    .col(big_null(Deployments::Offset))
                    .to_owned(),
            )
            .await?;
        ensure_index(
            manager,
            "deployments",
            Index::create()
                .name("ix_deployments_pipeline")
                .table(Deployments::Table)
                .col(Deployments::Pipeline)
                .col(Deployments::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(Deployments::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    Id,
    Pipeline,
    Stage,
    PluginSha256,
    VersionLabel,
    Actor,
    AtMs,
    Partition,
    Offset,
}
