//! Adds the source's identity to `checkpoints`: the Kafka cluster id and topic id the stored
//! position belongs to, and the offset base that maps the broker's offsets to the pipeline's
//! stream positions (non-zero only after the source log was replaced). Adds `error` to
//! `pipelines`, so a failed pipeline says why after a restart too.

use super::add_column;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            "checkpoints",
            ColumnDef::new(Checkpoints::ClusterId)
                .string_len(128)
                .null()
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            "checkpoints",
            ColumnDef::new(Checkpoints::TopicId)
                .string_len(64)
                .null()
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            "checkpoints",
            ColumnDef::new(Checkpoints::OffsetBase)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
        )
        .await?;
        add_column(
            manager,
            "pipelines",
            ColumnDef::new(Pipelines::Error).text().null().to_owned(),
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite cannot drop columns on every supported version; the columns are nullable or
        // defaulted, so leaving them is harmless.
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Checkpoints {
    ClusterId,
    TopicId,
    OffsetBase,
}

#[derive(DeriveIden)]
enum Pipelines {
    Error,
}
