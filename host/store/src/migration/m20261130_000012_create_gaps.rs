//! Creates `gaps`: every stretch of a pipeline's input that was lost or skipped (retention, a
//! replaced broker or topic), recorded with the checkpoint that moved past it.

use super::{NAME_LEN, big, big_null, ensure_index, id, int, string, text};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Gaps::Table)
                    .if_not_exists()
                    .col(id(Gaps::Id))
                    .col(string(Gaps::Pipeline, NAME_LEN))
                    .col(string(Gaps::Topic, 255))
                    .col(int(Gaps::Partition))
                    .col(big(Gaps::FromOffset))
                    .col(big(Gaps::ToOffset))
                    .col(big_null(Gaps::Records))
                    .col(string(Gaps::Reason, 32))
                    .col(text(Gaps::Detail))
                    .col(big(Gaps::AtMs))
                    .to_owned(),
            )
            .await?;
        ensure_index(
            manager,
            "gaps",
            Index::create()
                .name("ix_gaps_pipeline")
                .table(Gaps::Table)
                .col(Gaps::Pipeline)
                .col(Gaps::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Gaps::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Gaps {
    Table,
    Id,
    Pipeline,
    Topic,
    Partition,
    FromOffset,
    ToOffset,
    Records,
    Reason,
    Detail,
    AtMs,
}
