//! Creates `window_results`, keyed by (pipeline, key, window start).

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
                    .table(WindowResults::Table)
                    .if_not_exists()
                    .col(string(WindowResults::Pipeline, NAME_LEN))
                    .col(string(WindowResults::Key, KEY_LEN))
                    .col(big(WindowResults::WindowStart))
                    .col(big(WindowResults::WindowEnd))
                    .col(int(WindowResults::Partition))
                    .col(text(WindowResults::Output))
                    .col(string(WindowResults::Version, NAME_LEN))
                    .primary_key(
                        Index::create()
                            .name("pk_window_results")
                            .col(WindowResults::Pipeline)
                            .col(WindowResults::Key)
                            .col(WindowResults::WindowStart),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(WindowResults::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WindowResults {
    Table,
    Pipeline,
    Key,
    WindowStart,
    WindowEnd,
    Partition,
    Output,
    Version,
}
