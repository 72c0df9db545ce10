//! Creates `training_runs`: one row per training decision of a pipeline stage.

use super::{NAME_LEN, SHA_LEN, big, big_null, ensure_index, id, string, text};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TrainingRuns::Table)
                    .if_not_exists()
                    .col(id(TrainingRuns::Id))
                    .col(string(TrainingRuns::Pipeline, NAME_LEN))
                    .col(string(TrainingRuns::Stage, NAME_LEN))
                    .col(big_null(TrainingRuns::SnapshotId))
                    .col(big_null(TrainingRuns::ParentSnapshotId))
                    .col(string(TrainingRuns::Outcome, 16))
                    .col(string(TrainingRuns::Trigger, 16))
                    .col(string(TrainingRuns::Version, NAME_LEN))
                    .col(string(TrainingRuns::ChampionVersion, NAME_LEN))
                    .col(string(TrainingRuns::PluginSha256, SHA_LEN))
                    .col(string(TrainingRuns::Metric, 16))
                    .col(
                        ColumnDef::new(TrainingRuns::ChallengerScore)
                            .double()
                            .null(),
                    )
                    .col(ColumnDef::new(TrainingRuns::ChampionScore).double().null())
                    .col(text(TrainingRuns::Detail))
                    .col(big(TrainingRuns::AtMs))
                    .to_owned(),
            )
            .await?;
        ensure_index(
            manager,
            "training_runs",
            Index::create()
                .name("ix_training_runs_pipeline_stage")
                .table(TrainingRuns::Table)
                .col(TrainingRuns::Pipeline)
                .col(TrainingRuns::Stage)
                .col(TrainingRuns::Id)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(TrainingRuns::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum TrainingRuns {
    Table,
    Id,
    Pipeline,
    Stage,
    SnapshotId,
    ParentSnapshotId,
    Outcome,
    Trigger,
    Version,
    ChampionVersion,
    PluginSha256,
    Metric,
    ChallengerScore,
    ChampionScore,
    Detail,
    AtMs,
}
