//! Writes: partition claims, the transactional batch commit, deployments, tenants and keys.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};

use crate::entity::{
    api_keys, checkpoints, deployments, gaps, keyed_state, model_snapshots, predictions, tenants,
    training_runs, window_results,
};
use crate::{
    Claim, CommitBatch, CommitStats, NewDeployment, PartitionCommit, SourceIdentity, StateEntry,
    Store, StoreError, now_ms,
};

/// At most this many rows go into one multi-row statement: well under SQLite's variable limit
/// (32766) for our widest table.
const CHUNK_ROWS: usize = 500;
/// A multi-row statement is cut once its payload passes this many bytes, to stay under MySQL's
/// `max_allowed_packet` (16 MiB by default on MariaDB, 64 MiB on MySQL 8).
const CHUNK_BYTES: usize = 4 << 20;

impl Store {
    /// Claims (pipeline, partition) for a new owner.
    ///
    /// In one transaction: creates the checkpoint row if missing (next offset 0, watermark
    /// `i64::MIN`, epoch 0), increments its owner epoch, and returns the new epoch with the
    /// stored position and all keyed state of that partition. Commits of earlier owners are
    /// refused from then on ([`StoreError::Fenced`]).
    pub async fn claim(&self, pipeline: &str, partition: i32) -> Result<Claim, StoreError> {
        let txn = self.db.begin().await?;
        let now = now_ms();
        checkpoints::Entity::insert(checkpoints::ActiveModel {
            pipeline: Set(pipeline.to_owned()),
            partition: Set(partition),
            next_offset: Set(0),
            watermark: Set(i64::MIN),
            owner_epoch: Set(0),
            commits: Set(0),
            updated_at: Set(now),
            cluster_id: Set(None),
            topic_id: Set(None),
            offset_base: Set(0),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(&txn)
        .await?;
        checkpoints::Entity::update_many()
            .col_expr(
                checkpoints::Column::OwnerEpoch,
                Expr::col(checkpoints::Column::OwnerEpoch).add(1),
            )
            .col_expr(checkpoints::Column::UpdatedAt, Expr::value(now))
            .filter(checkpoints::Column::Pipeline.eq(pipeline))
            .filter(checkpoints::Column::Partition.eq(partition))
            .exec(&txn)
            .await?;
        let Some(checkpoint) = checkpoints::Entity::find_by_id((pipeline.to_owned(), partition))
            .one(&txn)
            .await?
        else {
            return Err(StoreError::Db(sea_orm::DbErr::RecordNotFound(format!(
                "checkpoint of {pipeline}/{partition} vanished during claim"
            ))));
        };
        let state = keyed_state::Entity::find()
            .filter(keyed_state::Column::Pipeline.eq(pipeline))
            .filter(keyed_state::Column::Partition.eq(partition))
            .order_by_asc(keyed_state::Column::Namespace)
            .order_by_asc(keyed_state::Column::Key)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| StateEntry {
                namespace: m.namespace,
                key: m.key,
                value: m.value,
            })
            .collect();
        txn.commit().await?;
        Ok(Claim {
            epoch: checkpoint.owner_epoch,
            next_offset: checkpoint.next_offset,
            watermark: checkpoint.watermark,
            state,
            source: SourceIdentity {
                cluster_id: checkpoint.cluster_id,
                topic_id: checkpoint.topic_id,
            },
            offset_base: checkpoint.offset_base,
        })
    }

    /// Commits one batch in one transaction.
    ///
    /// First every partition's checkpoint is advanced, guarded by its owner epoch (`UPDATE …
    /// SET next_offset, watermark, commits = commits + 1 … WHERE owner_epoch = ?`; the
    /// increment makes MySQL count the row as changed even when the position is unchanged). If
    /// a guard matches no row, the transaction is rolled back and [`StoreError::Fenced`] is
    /// returned: nothing of the batch is written. Then predictions and window results are
    /// upserted on their primary keys (a replayed batch overwrites, never duplicates), state
    /// changes are applied, and the snapshot, if any, is inserted.
    pub async fn commit(&self, batch: CommitBatch) -> Result<CommitStats, StoreError> {
        let CommitBatch {
            pipeline,
            partitions,
            predictions,
            window_results,
            snapshot,
            gaps,
        } = batch;
        let now = now_ms();
        let txn = self.db.begin().await?;
        let mut rows_written = 0u64;

        for p in &partitions {
            let updated = checkpoints::Entity::update_many()
                .col_expr(checkpoints::Column::NextOffset, Expr::value(p.next_offset))
                .col_expr(checkpoints::Column::Watermark, Expr::value(p.watermark))
                .col_expr(
                    checkpoints::Column::ClusterId,
                    Expr::value(p.source.cluster_id.clone()),
                )
                .col_expr(
                    checkpoints::Column::TopicId,
                    Expr::value(p.source.topic_id.clone()),
                )
                .col_expr(checkpoints::Column::OffsetBase, Expr::value(p.offset_base))
                .col_expr(
                    checkpoints::Column::Commits,
                    Expr::col(checkpoints::Column::Commits).add(1),
                )
                .col_expr(checkpoints::Column::UpdatedAt, Expr::value(now))
                .filter(checkpoints::Column::Pipeline.eq(pipeline.as_str()))
                .filter(checkpoints::Column::Partition.eq(p.partition))
                .filter(checkpoints::Column::OwnerEpoch.eq(p.epoch))
                .exec(&txn)
                .await?;
            if updated.rows_affected == 0 {
                txn.rollback().await?;
                return Err(StoreError::Fenced {
                    pipeline,
                    partition: p.partition,
                    epoch: p.epoch,
                });
            }
            rows_written += 1;
        }

        let rows = predictions.into_iter().map(|p| predictions::ActiveModel {
            pipeline: Set(pipeline.clone()),
            partition: Set(p.partition),
            offset: Set(p.offset),
            key: Set(p.key),
            ts: Set(p.ts),
            score: Set(p.score),
            output: Set(p.output),
            model_version: Set(p.model_version),
            extractor_version: Set(p.extractor_version),
        });
        for chunk in chunks(rows, |m| active_len(&m.output) + active_len(&m.key)) {
            rows_written += chunk.len() as u64;
            predictions::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([
                        predictions::Column::Pipeline,
                        predictions::Column::Partition,
                        predictions::Column::Offset,
                    ])
                    .update_columns([
                        predictions::Column::Key,
                        predictions::Column::Ts,
                        predictions::Column::Score,
                        predictions::Column::Output,
                        predictions::Column::ModelVersion,
                        predictions::Column::ExtractorVersion,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }

        let rows = window_results
            .into_iter()
            .map(|w| window_results::ActiveModel {
                pipeline: Set(pipeline.clone()),
                key: Set(w.key),
                window_start: Set(w.window_start),
                window_end: Set(w.window_end),
                partition: Set(w.partition),
                output: Set(w.output),
                version: Set(w.version),
            });
        for chunk in chunks(rows, |m| active_len(&m.output) + active_len(&m.key)) {
            rows_written += chunk.len() as u64;
            window_results::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([
                        window_results::Column::Pipeline,
                        window_results::Column::Key,
                        window_results::Column::WindowStart,
                    ])
                    .update_columns([
                        window_results::Column::WindowEnd,
                        window_results::Column::Partition,
                        window_results::Column::Output,
                        window_results::Column::Version,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }

        for p in partitions {
            rows_written += apply_state(&txn, &pipeline, p).await?;
        }

        if !gaps.is_empty() {
            rows_written += gaps.len() as u64;
            gaps::Entity::insert_many(gaps.into_iter().map(|g| gaps::ActiveModel {
                id: NotSet,
                pipeline: Set(pipeline.clone()),
                topic: Set(g.topic),
                partition: Set(g.partition),
                from_offset: Set(g.from_offset),
                to_offset: Set(g.to_offset),
                records: Set(g.records),
                reason: Set(g.reason),
                detail: Set(g.detail),
                at_ms: Set(g.at_ms),
            }))
            .exec_without_returning(&txn)
            .await?;
        }

        let snapshot_id = match snapshot {
            Some(s) => {
                rows_written += 1;
                let inserted = model_snapshots::Entity::insert(model_snapshots::ActiveModel {
                    id: NotSet,
                    pipeline: Set(pipeline.clone()),
                    stage: Set(s.stage),
                    plugin_sha256: Set(s.plugin_sha256),
                    parent_id: Set(s.parent_id),
                    bytes: Set(s.bytes),
                    from_offset: Set(s.from_offset),
                    to_offset: Set(s.to_offset),
                    metrics: Set(s.metrics),
                    created_at: Set(now),
                })
                .exec(&txn)
                .await?;
                Some(inserted.last_insert_id)
            }
            None => None,
        };

        if let Some(pause) = self.commit_pause {
            tokio::time::sleep(pause).await;
        }
        txn.commit().await?;
        Ok(CommitStats {
            rows_written,
            snapshot_id,
        })
    }

    /// Records a deployment event and returns its id.
    pub async fn record_deployment(&self, d: NewDeployment) -> Result<i64, StoreError> {
        let inserted = deployments::Entity::insert(deployments::ActiveModel {
            id: NotSet,
            pipeline: Set(d.pipeline),
            stage: Set(d.stage),
            plugin_sha256: Set(d.plugin_sha256),
            version_label: Set(d.version_label),
            actor: Set(d.actor),
            at_ms: Set(d.at_ms),
            partition: Set(d.partition),
            offset: Set(d.offset),
        })
        .exec(&self.db)
        .await?;
        Ok(inserted.last_insert_id)
    }

    /// Deletes every row of a pipeline: predictions, window results, checkpoints, keyed
    /// state, model snapshots, training runs, deployments and gaps, in one transaction.
    pub async fn reset_pipeline(&self, pipeline: &str) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        predictions::Entity::delete_many()
            .filter(predictions::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        window_results::Entity::delete_many()
            .filter(window_results::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        checkpoints::Entity::delete_many()
            .filter(checkpoints::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        keyed_state::Entity::delete_many()
            .filter(keyed_state::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        model_snapshots::Entity::delete_many()
            .filter(model_snapshots::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        training_runs::Entity::delete_many()
            .filter(training_runs::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        deployments::Entity::delete_many()
            .filter(deployments::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        gaps::Entity::delete_many()
            .filter(gaps::Column::Pipeline.eq(pipeline))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Creates a tenant and returns its id. Names are unique: a duplicate is a
    /// [`StoreError::Db`].
    pub async fn create_tenant(&self, name: &str) -> Result<i64, StoreError> {
        let inserted = tenants::Entity::insert(tenants::ActiveModel {
            id: NotSet,
            name: Set(name.to_owned()),
            created_at: Set(now_ms()),
            limits: Set(None),
        })
        .exec(&self.db)
        .await?;
        Ok(inserted.last_insert_id)
    }

    /// Stores an API key of a tenant by its hex SHA-256 and returns the key's id.
    pub async fn insert_api_key(
        &self,
        tenant_id: i64,
        key_hash: &str,
        label: &str,
    ) -> Result<i64, StoreError> {
        let inserted = api_keys::Entity::insert(api_keys::ActiveModel {
            id: NotSet,
            tenant_id: Set(tenant_id),
            key_hash: Set(key_hash.to_owned()),
            label: Set(label.to_owned()),
            created_at: Set(now_ms()),
            revoked: Set(false),
            last_used_at: Set(None),
        })
        .exec(&self.db)
        .await?;
        Ok(inserted.last_insert_id)
    }
}

/// Applies the state changes of one partition; returns how many rows it touched. Changes of
/// the same key collapse to the last one, so upserts and deletes are disjoint.
async fn apply_state(
    txn: &DatabaseTransaction,
    pipeline: &str,
    p: PartitionCommit,
) -> Result<u64, StoreError> {
    let mut last: HashMap<(String, String), Option<Vec<u8>>> = HashMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for change in p.state {
        let id = (change.namespace, change.key);
        if last.insert(id.clone(), change.value).is_none() {
            order.push(id);
        }
    }
    let mut upserts = Vec::new();
    let mut deletes: HashMap<String, Vec<String>> = HashMap::new();
    for (namespace, key) in order {
        match last.remove(&(namespace.clone(), key.clone())).flatten() {
            Some(value) => upserts.push(keyed_state::ActiveModel {
                pipeline: Set(pipeline.to_owned()),
                partition: Set(p.partition),
                namespace: Set(namespace),
                key: Set(key),
                value: Set(value),
            }),
            None => deletes.entry(namespace).or_default().push(key),
        }
    }
    let mut rows = 0u64;
    for chunk in chunks(upserts, |m| active_len(&m.key) + active_bytes(&m.value)) {
        rows += chunk.len() as u64;
        keyed_state::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([
                    keyed_state::Column::Pipeline,
                    keyed_state::Column::Partition,
                    keyed_state::Column::Namespace,
                    keyed_state::Column::Key,
                ])
                .update_column(keyed_state::Column::Value)
                .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    for (namespace, keys) in deletes {
        for chunk in keys.chunks(CHUNK_ROWS) {
            rows += chunk.len() as u64;
            keyed_state::Entity::delete_many()
                .filter(keyed_state::Column::Pipeline.eq(pipeline))
                .filter(keyed_state::Column::Partition.eq(p.partition))
                .filter(keyed_state::Column::Namespace.eq(namespace.as_str()))
                .filter(keyed_state::Column::Key.is_in(chunk.iter().map(String::as_str)))
                .exec(txn)
                .await?;
        }
    }
    Ok(rows)
}

/// Splits rows into statements of at most [`CHUNK_ROWS`] rows and about [`CHUNK_BYTES`] bytes
/// (a single larger row gets a statement of its own).
fn chunks<T>(rows: impl IntoIterator<Item = T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let n = size(&row);
        if !current.is_empty() && (current.len() >= CHUNK_ROWS || bytes + n > CHUNK_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += n;
        current.push(row);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Byte length of a set string value.
fn active_len(v: &sea_orm::ActiveValue<String>) -> usize {
    match v {
        Set(s) | sea_orm::ActiveValue::Unchanged(s) => s.len(),
        NotSet => 0,
    }
}

/// Byte length of a set binary value.
fn active_bytes(v: &sea_orm::ActiveValue<Vec<u8>>) -> usize {
    match v {
        Set(b) | sea_orm::ActiveValue::Unchanged(b) => b.len(),
        NotSet => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_by_rows_and_bytes() {
        let lens: Vec<usize> = chunks(0..1001, |_| 1).iter().map(Vec::len).collect();
        assert_eq!(lens, [500, 500, 1]);
        let big = chunks([1usize, CHUNK_BYTES, 1, 1], |n| *n);
        assert_eq!(big.len(), 3);
        assert!(chunks(Vec::<u8>::new(), |_| 1).is_empty());
    }
}
