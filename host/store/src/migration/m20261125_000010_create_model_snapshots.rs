//! Creates `model_snapshots`.

use super::{NAME_LEN, SHA_LEN, big, big_null, ensure_index, id, long_blob, string, text};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ModelSnapshots::Table)
                    .if_not_exists()
                    .col(id(ModelSnapshots::Id))
                    .col(string(ModelSnapshots::Pipeline, NAME_LEN))
                    .col(string(ModelSnapshots::Stage, NAME_LEN))
                    .col(string(ModelSnapshots::PluginSha256, SHA_LEN))
                    .col(big_null(ModelSnapshots::ParentId))
                    .col(long_blob(manager, ModelSnapshots::Bytes))
                    .col(big_null(ModelSnapshots::FromOffset))
                    .col(big_null(ModelSnapshots::ToOffset))
                    .col(text(ModelSnapshots::Metrics))
                    .col(big(ModelSnapshots::CreatedAt))
                    .to_owned(),
            )
            .await?;
        ensure_index(
            manager,
            "model_snapshots",
            Index::create()
                .name("ix_model_snapshots_pipeline_stage")
                .table(ModelSnapshots::Table)
                .col(ModelSnapshots::Pipeline)
                .col(ModelSnapshots::Stage)
                .col(ModelSnapshots::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(ModelSnapshots::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ModelSnapshots {
    Table,
    Id,
    Pipeline,
    Stage,
    PluginSha256,
    ParentId,
    Bytes,
    FromOffset,
    ToOffset,
    Metrics,
    CreatedAt,
}
