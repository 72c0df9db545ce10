//! Creates `predictions`, keyed by source position so replays overwrite.

use super::{KEY_LEN, NAME_LEN, big, int, string, text};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Predictions::Table)
                    .if_not_exists()
                    .col(string(Predictions::Pipeline, NAME_LEN))
                    .col(int(Predictions::Partition))
                    .col(big(Predictions::Offset))
                    .col(string(Predictions::Key, KEY_LEN))
                    .col(big(Predictions::Ts))
                    .col(ColumnDef::new(Predictions::Score).double().null())
                    .col(text(Predictions::Output))
                    .col(string(Predictions::ModelVersion, NAME_LEN))
                    .col(string(Predictions::ExtractorVersion, NAME_LEN))
                    .primary_key(
                        Index::create()
                            .name("pk_predictions")
                            .col(Predictions::Pipeline)
                            .col(Predictions::Partition)
                            .col(Predictions::Offset),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(Predictions::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Predictions {
    Table,
    Pipeline,
    Partition,
    Offset,
    Key,
    Ts,
    Score,
    Output,
    ModelVersion,
    ExtractorVersion,
}
