//! Creates `checkpoints`, keyed by (pipeline, partition), with the owner epoch for fencing.

use super::{NAME_LEN, big, int, string};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Checkpoints::Table)
                    .if_not_exists()
                    .col(string(Checkpoints::Pipeline, NAME_LEN))
                    .col(int(Checkpoints::Partition))
                    .col(big(Checkpoints::NextOffset))
                    .col(big(Checkpoints::Watermark))
                    .col(big(Checkpoints::OwnerEpoch))
                    .col(big(Checkpoints::Commits))
                    .col(big(Checkpoints::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .name("pk_checkpoints")
                            .col(Checkpoints::Pipeline)
                            .col(Checkpoints::Partition),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(Checkpoints::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Checkpoints {
    Table,
    Pipeline,
    Partition,
    NextOffset,
    Watermark,
    OwnerEpoch,
    Commits,
    UpdatedAt,
}
