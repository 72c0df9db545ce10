//! Creates `keyed_state`, keyed by (pipeline, partition, namespace, key).

use super::{KEY_LEN, NAME_LEN, int, long_blob, string};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KeyedState::Table)
                    .if_not_exists()
                    .col(string(KeyedState::Pipeline, NAME_LEN))
                    .col(int(KeyedState::Partition))
                    .col(string(KeyedState::Namespace, 64))
                    .col(string(KeyedState::Key, KEY_LEN))
                    .col(long_blob(manager, KeyedState::Value))
                    .primary_key(
                        Index::create()
                            .name("pk_keyed_state")
                            .col(KeyedState::Pipeline)
                            .col(KeyedState::Partition)
                            .col(KeyedState::Namespace)
                            .col(KeyedState::Key),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(KeyedState::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum KeyedState {
    Table,
    Pipeline,
    Partition,
    Namespace,
    Key,
    Value,
}
