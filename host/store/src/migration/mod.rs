//! Schema migrations: one file per table, all registered in [`Migrator`] in creation order.
//!
//! Every `up` is idempotent on its own (`CREATE TABLE IF NOT EXISTS`, indexes created only when
//! missing), so a migration interrupted on MySQL or SQLite (no transactional DDL there) can simply
//! be re-run. The migrations spell their identifiers out instead of borrowing the entities', so
//! that a later entity change cannot silently rewrite history.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

mod m20261125_000001_create_tenants;
mod m20261125_000002_create_api_keys;
mod m20261125_000003_create_plugins;
mod m20261125_000004_create_pipelines;
mod m20261125_000005_create_deployments;
mod m20261125_000006_create_predictions;
mod m20261125_000007_create_window_results;
mod m20261125_000008_create_checkpoints;
mod m20261125_000009_create_keyed_state;
mod m20261125_000010_create_model_snapshots;
mod m20261125_000011_create_training_runs;
mod m20261130_000012_create_gaps;
mod m20261130_000013_alter_checkpoints_source;
mod m20261130_000014_alter_tenants_limits;
mod m20261130_000015_alter_api_keys_last_used;

/// How many migrations weir has (one per table, then one per later change).
pub const MIGRATIONS: usize = 15;

/// All of weir's migrations, in order. [`crate::Store::connect`] runs `Migrator::up` itself.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_tenants::Migration),
            Box::new(m20261125_000002_create_api_keys::Migration),
            Box::new(m20261125_000003_create_plugins::Migration),
            Box::new(m20261125_000004_create_pipelines::Migration),
            Box::new(m20261125_000005_create_deployments::Migration),
            Box::new(m20261125_000006_create_predictions::Migration),
            Box::new(m20261125_000007_create_window_results::Migration),
            Box::new(m20261125_000008_create_checkpoints::Migration),
            Box::new(m20261125_000009_create_keyed_state::Migration),
            Box::new(m20261125_000010_create_model_snapshots::Migration),
            Box::new(m20261125_000011_create_training_runs::Migration),
            Box::new(m20261130_000012_create_gaps::Migration),
            Box::new(m20261130_000013_alter_checkpoints_source::Migration),
            Box::new(m20261130_000014_alter_tenants_limits::Migration),
            Box::new(m20261130_000015_alter_api_keys_last_used::Migration),
        ]
    }
}

/// Length of pipeline, tenant, stage and other name columns. Short enough that composite
/// primary keys stay under InnoDB's 3072-byte index limit in utf8mb4.
pub(crate) const NAME_LEN: u32 = 128;
/// Length of record and state keys.
pub(crate) const KEY_LEN: u32 = 255;
/// Length of a hex SHA-256.
pub(crate) const SHA_LEN: u32 = 64;

/// `BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY` (`integer … AUTOINCREMENT` on SQLite).
pub(crate) fn id<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

/// A `VARCHAR(len) NOT NULL` column.
pub(crate) fn string<T: IntoIden>(col: T, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).not_null().to_owned()
}

/// A `TEXT NOT NULL` column (JSON documents, specs).
pub(crate) fn text<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

/// A `BIGINT NOT NULL` column.
pub(crate) fn big<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

/// A nullable `BIGINT` column.
pub(crate) fn big_null<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

/// An `INTEGER NOT NULL` column.
pub(crate) fn int<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().to_owned()
}

/// A binary column for payloads of any size: `LONGBLOB` on MySQL (its `BLOB` stops at 64 KiB),
/// `BLOB` elsewhere.
pub(crate) fn long_blob<T: IntoIden>(manager: &SchemaManager<'_>, col: T) -> ColumnDef {
    let mut def = ColumnDef::new(col);
    match manager.get_database_backend() {
        DbBackend::MySql => def.custom(Alias::new("LONGBLOB")),
        _ => def.blob(),
    };
    def.not_null().to_owned()
}

/// Adds a column to `table` unless it has one of that name (SQLite has no
/// `ADD COLUMN IF NOT EXISTS`), so the migration stays idempotent.
pub(crate) async fn add_column(
    manager: &SchemaManager<'_>,
    table: &str,
    mut column: ColumnDef,
) -> Result<(), DbErr> {
    let name = column.get_column_name();
    if manager.has_column(table, &name).await? {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(table))
                .add_column(&mut column)
                .to_owned(),
        )
        .await
}

/// Creates a non-unique index unless one of that name exists (MySQL has no
/// `CREATE INDEX IF NOT EXISTS`).
pub(crate) async fn ensure_index(
    manager: &SchemaManager<'_>,
    table: &str,
    index: IndexCreateStatement,
) -> Result<(), DbErr> {
    let Some(name) = index.get_index_spec().get_name().map(str::to_owned) else {
        return Err(DbErr::Migration(format!("unnamed index on {table}")));
    };
    if manager.has_index(table, &name).await? {
        return Ok(());
    }
    manager.create_index(index).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_matches_the_list() {
        assert_eq!(Migrator::migrations().len(), MIGRATIONS);
    }
}
