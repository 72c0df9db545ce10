//! weir's persistence layer: sea-orm entities, migrations and the transactional commit path.
//!
//! One code path serves MySQL/MariaDB and SQLite. The effectively-once contract lives in
//! [`Store::commit`]: source positions, results and keyed state of a batch are written in one
//! database transaction, and the transaction is refused ([`StoreError::Fenced`]) when the writer
//! no longer owns the partition (its epoch was superseded by a later [`Store::claim`]).
//!
//! Queries (reads) are in `query.rs`, mutations in `mutation.rs`; both extend [`Store`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

pub mod entity;
mod keys;
pub mod migration;
mod mutation;
mod query;
mod tenancy;
mod training;

pub use keys::{KeyMatch, KeyRecord};
pub use migration::Migrator;
/// sea-orm itself, so callers of [`Store::connection`] need no dependency of their own.
pub use sea_orm;
pub use tenancy::{
    ADMIN_TENANT, NewPlugin, PipelineRecord, PluginRecord, ResultFilter, TenantRecord, TenantUsage,
};
pub use training::{NewTrainingRun, TrainingRun};

/// Errors of the store, by who is at fault: the caller's configuration (`BadUrl`, `BadName`),
/// the external database (`Connect`, `Migrate`, `Db`) or a stale partition owner (`Fenced`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to {url_redacted}: {source}")]
    Connect {
        /// The URL, with any password replaced by `***`.
        url_redacted: String,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
    /// Running the schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[source] DbErr),
    /// The writer's epoch is no longer the partition's owner epoch: another owner claimed the
    /// partition since. Nothing of the batch was written.
    #[error(
        "pipeline {pipeline:?} partition {partition}: epoch {epoch} is fenced by a newer owner"
    )]
    Fenced {
        /// The pipeline of the refused batch.
        pipeline: String,
        /// The partition whose checkpoint did not match.
        partition: i32,
        /// The epoch the writer presented.
        epoch: i64,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// A row with the same unique name already exists.
    #[error("{0}")]
    Conflict(String),
    /// The URL is neither `sqlite:` nor `mysql://`.
    #[error("unsupported database url {0:?}: expected sqlite:… or mysql://…")]
    BadUrl(String),
    /// A database name that is not a plain identifier (`[A-Za-z0-9_]`, at most 64 characters).
    #[error("invalid database name {0:?}")]
    BadName(String),
}

/// A connection pool to weir's database, with the schema migrated.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    backend: DbBackend,
    commit_pause: Option<Duration>,
    /// With `sqlite::memory:`, a second connection to the same database that is never
    /// used: an in-memory SQLite database lives while a connection to it is open, and the
    /// pool closes its connection when a query on it is cancelled (a client that hangs up
    /// mid-request), which would otherwise drop every table.
    _keeper: Option<DatabaseConnection>,
}

/// Which log a stored position belongs to: a topic (by its id, which changes when the topic
/// is recreated) on a Kafka cluster (by its cluster id). Either part is `None` when the
/// broker did not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceIdentity {
    /// The cluster id the broker reports.
    pub cluster_id: Option<String>,
    /// The topic id (base64), Kafka's name for one incarnation of a topic.
    pub topic_id: Option<String>,
}

/// What a new owner of a partition gets from [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The new owner epoch; every [`PartitionCommit`] of this owner must carry it.
    pub epoch: i64,
    /// The first stream position not yet committed.
    pub next_offset: i64,
    /// The committed watermark (`i64::MIN` before the first commit).
    pub watermark: i64,
    /// All keyed state of the partition, ordered by namespace and key.
    pub state: Vec<StateEntry>,
    /// The log the stored position belongs to (both parts `None` before the first commit).
    pub source: SourceIdentity,
    /// Stream position minus broker offset in that log.
    pub offset_base: i64,
}

/// One stored state value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The state namespace (at most 64 characters).
    pub namespace: String,
    /// The key within the namespace (at most 255 characters).
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
}

/// A change to one state value: `Some` writes it, `None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The state namespace (at most 64 characters).
    pub namespace: String,
    /// The key within the namespace (at most 255 characters).
    pub key: String,
    /// The new value, or `None` to delete the entry.
    pub value: Option<Vec<u8>>,
}

/// The new position and state changes of one partition in a [`CommitBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    /// The partition.
    pub partition: i32,
    /// The writer's owner epoch, from [`Claim::epoch`].
    pub epoch: i64,
    /// The first stream position not covered by this commit.
    pub next_offset: i64,
    /// The log the position belongs to.
    pub source: SourceIdentity,
    /// Stream position minus broker offset in that log.
    pub offset_base: i64,
    /// The watermark after this commit.
    pub watermark: i64,
    /// State changes, applied in order (the last change of a key wins).
    pub state: Vec<StateChange>,
}

/// A prediction for one input record, identified by its source position.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The source partition.
    pub partition: i32,
    /// The source offset.
    pub offset: i64,
    /// The record key (at most 255 characters).
    pub key: String,
    /// The event time, ms.
    pub ts: i64,
    /// The score, if the model produces one.
    pub score: Option<f64>,
    /// The full model output, JSON text.
    pub output: String,
    /// Version label of the model that scored the record.
    pub model_version: String,
    /// Version label of the feature extractor.
    pub extractor_version: String,
}

/// The output of one closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// The window key (at most 255 characters).
    pub key: String,
    /// Window start, ms (inclusive).
    pub window_start: i64,
    /// Window end, ms (exclusive).
    pub window_end: i64,
    /// The partition that produced it.
    pub partition: i32,
    /// The operator output, JSON text.
    pub output: String,
    /// Version label of the operator.
    pub version: String,
}

/// A model snapshot to store with a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    /// The pipeline stage whose model this is.
    pub stage: String,
    /// SHA-256 of the plugin that produced the snapshot.
    pub plugin_sha256: String,
    /// The snapshot this one was trained from.
    pub parent_id: Option<i64>,
    /// The opaque model state.
    pub bytes: Vec<u8>,
    /// First offset of the training window.
    pub from_offset: Option<i64>,
    /// Last offset of the training window.
    pub to_offset: Option<i64>,
    /// Training metrics, JSON text.
    pub metrics: String,
}

/// A stored model snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSnapshot {
    /// The snapshot id.
    pub id: i64,
    /// The pipeline.
    pub pipeline: String,
    /// The pipeline stage whose model this is.
    pub stage: String,
    /// SHA-256 of the plugin that produced the snapshot.
    pub plugin_sha256: String,
    /// The snapshot this one was trained from.
    pub parent_id: Option<i64>,
    /// The opaque model state.
    pub bytes: Vec<u8>,
    /// First offset of the training window.
    pub from_offset: Option<i64>,
    /// Last offset of the training window.
    pub to_offset: Option<i64>,
    /// Training metrics, JSON text.
    pub metrics: String,
    /// When it was stored, ms.
    pub created_at: i64,
}

/// Everything one batch commits, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitBatch {
    /// The pipeline.
    pub pipeline: String,
    /// New positions and state of the partitions the batch covers.
    pub partitions: Vec<PartitionCommit>,
    /// Predictions to upsert.
    pub predictions: Vec<Prediction>,
    /// Window results to upsert.
    pub window_results: Vec<WindowResult>,
    /// A model snapshot to insert.
    pub snapshot: Option<NewSnapshot>,
    /// Gaps in the input that the new positions move past.
    pub gaps: Vec<NewGap>,
}

/// A stretch of input that was lost or skipped, recorded with the checkpoint that moves the
/// position past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGap {
    /// The source topic.
    pub topic: String,
    /// The source partition.
    pub partition: i32,
    /// The first stream position not processed.
    pub from_offset: i64,
    /// The stream position processing resumed at.
    pub to_offset: i64,
    /// Records lost, when the broker can tell (`None` when the old log is gone).
    pub records: Option<i64>,
    /// `retention`, `beyond_end`, `source_replaced` or `broker_restarted`.
    pub reason: String,
    /// What was seen, in words.
    pub detail: String,
    /// When, UTC ms.
    pub at_ms: i64,
}

/// A recorded gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The row id (increasing in recording order).
    pub id: i64,
    /// The pipeline.
    pub pipeline: String,
    /// What was lost or skipped.
    pub gap: NewGap,
}

/// What [`Store::commit`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Rows submitted: checkpoints, predictions, window results, state changes (after collapsing
    /// repeated keys) and the snapshot. Counted by the store, not from the driver's "affected
    /// rows", which MySQL and SQLite count differently for upserts.
    pub rows_written: u64,
    /// The id of the inserted snapshot, if the batch had one.
    pub snapshot_id: Option<i64>,
}

/// The committed position of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The pipeline.
    pub pipeline: String,
    /// The partition.
    pub partition: i32,
    /// The first offset not yet committed.
    pub next_offset: i64,
    /// The committed watermark.
    pub watermark: i64,
    /// The epoch of the current owner.
    pub owner_epoch: i64,
    /// How many commits have been applied.
    pub commits: i64,
    /// Time of the last claim or commit, ms.
    pub updated_at: i64,
    /// The log the position belongs to.
    pub source: SourceIdentity,
    /// Stream position minus broker offset in that log.
    pub offset_base: i64,
}

/// A deployment event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    /// The pipeline.
    pub pipeline: String,
    /// The stage the plugin was deployed to.
    pub stage: String,
    /// SHA-256 of the deployed plugin.
    pub plugin_sha256: String,
    /// Human-readable version label.
    pub version_label: String,
    /// Who deployed it.
    pub actor: String,
    /// When, ms.
    pub at_ms: i64,
    /// The partition where it took effect, if known.
    pub partition: Option<i32>,
    /// The offset where it took effect, if known.
    pub offset: Option<i64>,
}

/// A recorded deployment event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The event id (increasing in recording order).
    pub id: i64,
    /// The pipeline.
    pub pipeline: String,
    /// The stage the plugin was deployed to.
    pub stage: String,
    /// SHA-256 of the deployed plugin.
    pub plugin_sha256: String,
    /// Human-readable version label.
    pub version_label: String,
    /// Who deployed it.
    pub actor: String,
    /// When, ms.
    pub at_ms: i64,
    /// The partition where it took effect, if known.
    pub partition: Option<i32>,
    /// The offset where it took effect, if known.
    pub offset: Option<i64>,
}

impl Store {
    /// Connects and runs the migrations (idempotent).
    ///
    /// Accepts `sqlite://path.db` or `sqlite:path.db` (the file is created if missing:
    /// `?mode=rwc` is appended when the URL has no query), `sqlite::memory:` (one private
    /// database, held by a single connection), or `mysql://user:password@host:port/database`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let (mut full_url, memory) = normalize_url(url)?;
        let mut keeper = None;
        if memory {
            // One named in-memory database per store, shared by the pool and its keeper.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if url.contains(":memory:") {
                full_url = format!(
                    "sqlite:file:weir-memory-{}-{n}?mode=memory&cache=shared",
                    std::process::id()
                );
            }
            let mut options = ConnectOptions::new(full_url.clone());
            options
                .sqlx_logging(false)
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            keeper =
                Some(
                    Database::connect(options)
                        .await
                        .map_err(|source| StoreError::Connect {
                            url_redacted: redact_url(url),
                            source,
                        })?,
                );
        }
        let mut options = ConnectOptions::new(full_url);
        // Statement logging would print whole batches (and multi-megabyte blobs).
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10));
        if !memory && url.starts_with("sqlite:") {
            // Write-ahead logging: readers (the API, paging results) never wait for the
            // worker's checkpoint transactions, nor they for readers; and a commit appends to
            // the log instead of rewriting pages. `synchronous = NORMAL` syncs at WAL
            // checkpoints: a crash of weir loses nothing committed; a power loss can roll
            // back the last checkpoints, positions and results together, and they are
            // replayed. A 64 MiB page cache per connection (the default is 2 MiB) keeps the
            // keyed-state and results indexes a checkpoint updates in memory instead of
            // re-reading their pages on every commit; statement journals (an upsert rolls
            // back alone on a conflict) stay in memory instead of a temporary file; and the log
            // is copied back into the database every 64 MiB instead of every 4 MiB, so
            // pages each checkpoint rewrites (index pages, hot keys) are copied once.
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            options.map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .pragma("cache_size", "-65536")
                    .pragma("temp_store", "memory")
                    .pragma("wal_autocheckpoint", "16384")
            });
        }
        if memory {
            // One connection: the keeper holds the database, the pool reaches it through this.
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let db = Database::connect(options)
            .await
            .map_err(|source| StoreError::Connect {
                url_redacted: redact_url(url),
                source,
            })?;
        Migrator::up(&db, None).await.map_err(StoreError::Migrate)?;
        let backend = db.get_database_backend();
        Ok(Store {
            db,
            backend,
            commit_pause: None,
            _keeper: keeper,
        })
    }

    /// Failpoint for crash tests: [`Store::commit`] holds its transaction open this long,
    /// after every write and before it commits, so that a kill can land inside it.
    pub fn set_commit_pause(&mut self, pause: Duration) {
        self.commit_pause = Some(pause).filter(|p| !p.is_zero());
    }

    /// The underlying sea-orm connection pool, for queries this API does not cover.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// `"sqlite"` or `"mysql"` (MariaDB included).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            DbBackend::Sqlite => "sqlite",
            DbBackend::MySql => "mysql",
            _ => "other",
        }
    }

    /// Closes the connection pool, waiting for connections in use to be returned.
    pub async fn close(self) -> Result<(), StoreError> {
        Ok(self.db.close().await?)
    }
}

/// Creates database `name` on the MySQL/MariaDB server at `server_url` (any
/// `mysql://user@host:port/db` URL whose account may create databases) unless it exists, and
/// returns `server_url` pointed at the new database. Meant for tests and first-time setup.
pub async fn create_mysql_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    admin_statement(
        server_url,
        name,
        &format!("CREATE DATABASE IF NOT EXISTS `{name}`"),
    )
    .await?;
    with_database(server_url, name)
}

/// Drops database `name` on the MySQL/MariaDB server at `server_url`, if it exists.
pub async fn drop_mysql_database(server_url: &str, name: &str) -> Result<(), StoreError> {
    admin_statement(
        server_url,
        name,
        &format!("DROP DATABASE IF EXISTS `{name}`"),
    )
    .await
}

/// Runs one administrative statement about database `name` on a fresh connection.
async fn admin_statement(server_url: &str, name: &str, sql: &str) -> Result<(), StoreError> {
    if !server_url.starts_with("mysql://") {
        return Err(StoreError::BadUrl(redact_url(server_url)));
    }
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(StoreError::BadName(name.to_owned()));
    }
    let mut options = ConnectOptions::new(server_url);
    options.sqlx_logging(false).max_connections(1);
    let db = Database::connect(options)
        .await
        .map_err(|source| StoreError::Connect {
            url_redacted: redact_url(server_url),
            source,
        })?;
    let result = db.execute_unprepared(sql).await;
    db.close().await?;
    result?;
    Ok(())
}

/// `mysql://user@host:port/anything?query` → `mysql://user@host:port/name?query`.
fn with_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    let Some(rest) = server_url.strip_prefix("mysql://") else {
        return Err(StoreError::BadUrl(redact_url(server_url)));
    };
    let (before_query, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    Ok(format!("mysql://{authority}/{name}{query}"))
}

/// Checks the scheme, and makes a SQLite file URL create its file. Returns the URL to use and
/// whether it is an in-memory SQLite database.
fn normalize_url(url: &str) -> Result<(String, bool), StoreError> {
    if url.starts_with("mysql://") {
        return Ok((url.to_owned(), false));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let memory = rest.contains(":memory:") || rest.contains("mode=memory");
        if memory || rest.contains('?') {
            return Ok((url.to_owned(), memory));
        }
        let path = rest.trim_start_matches("//");
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        return Ok((format!("{url}?mode=rwc"), false));
    }
    Err(StoreError::BadUrl(redact_url(url)))
}

/// Replaces the password of `scheme://user:password@host…` with `***`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..start],
        &userinfo[..colon],
        &url[start + at..]
    )
}

/// Now, as UTC milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("mysql://root:hunter2@127.0.0.1:3306/test"),
            "mysql://root:***@127.0.0.1:3306/test"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn normalizes_urls() {
        assert_eq!(
            normalize_url("sqlite://a.db").ok(),
            Some(("sqlite://a.db?mode=rwc".to_owned(), false))
        );
        assert_eq!(
            normalize_url("sqlite://a.db?mode=ro").ok(),
            Some(("sqlite://a.db?mode=ro".to_owned(), false))
        );
        assert_eq!(
            normalize_url("sqlite::memory:").ok(),
            Some(("sqlite::memory:".to_owned(), true))
        );
        assert!(matches!(
            normalize_url("postgres://x"),
            Err(StoreError::BadUrl(_))
        ));
    }

    #[test]
    fn points_urls_at_a_database() {
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306/test", "weir_x").ok(),
            Some("mysql://root@127.0.0.1:3306/weir_x".to_owned())
        );
        assert_eq!(
            with_database("mysql://root@h?ssl-mode=disabled", "d").ok(),
            Some("mysql://root@h/d?ssl-mode=disabled".to_owned())
        );
    }
}
