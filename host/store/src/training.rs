//! Training decisions and the lineage of trained models: every candidate a trainer judged
//! is a `model_snapshots` row (parent: the champion it challenged, window offsets,
//! metrics) plus a `training_runs` row with the decision.

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use crate::entity::{model_snapshots, training_runs};
use crate::{ModelSnapshot, Store, StoreError};

/// A training decision to record, with its candidate's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrainingRun {
    /// The pipeline.
    pub pipeline: String,
    /// The stage trained.
    pub stage: String,
    /// `promoted`, `rejected` or `failed`.
    pub outcome: String,
    /// `first`, `schedule`, `timer` or `drift`.
    pub trigger: String,
    /// The candidate's version id (empty when the fit failed).
    pub version: String,
    /// The champion's version id.
    pub champion_version: String,
    /// The plugin serving the model.
    pub plugin_sha256: String,
    /// The validation metric.
    pub metric: String,
    /// The candidate's held-out score.
    pub challenger_score: Option<f64>,
    /// The champion's held-out score.
    pub champion_score: Option<f64>,
    /// The whole decision, JSON text (also the snapshot's `metrics`).
    pub detail: String,
    /// When it was decided, ms.
    pub at_ms: i64,
    /// The candidate's parameters in the plugin's snapshot format (none when the fit
    /// failed).
    pub snapshot: Option<Vec<u8>>,
    /// The training window's first offset.
    pub from_offset: Option<i64>,
    /// The training window's last offset.
    pub to_offset: Option<i64>,
    /// The champion's snapshot, when the champion was itself trained.
    pub parent_snapshot_id: Option<i64>,
}

/// A recorded training decision.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    /// The decision's id (increasing in recording order).
    pub id: i64,
    /// The pipeline.
    pub pipeline: String,
    /// The stage trained.
    pub stage: String,
    /// The candidate's snapshot.
    pub snapshot_id: Option<i64>,
    /// The champion's snapshot, when the champion was itself trained.
    pub parent_snapshot_id: Option<i64>,
    /// `promoted`, `rejected` or `failed`.
    pub outcome: String,
    /// `first`, `schedule`, `timer` or `drift`.
    pub trigger: String,
    /// The candidate's version id.
    pub version: String,
    /// The champion's version id.
    pub champion_version: String,
    /// The plugin serving the model.
    pub plugin_sha256: String,
    /// The validation metric.
    pub metric: String,
    /// The candidate's held-out score.
    pub challenger_score: Option<f64>,
    /// The champion's held-out score.
    pub champion_score: Option<f64>,
    /// The whole decision, JSON text.
    pub detail: String,
    /// When it was decided, ms.
    pub at_ms: i64,
}

impl From<training_runs::Model> for TrainingRun {
    fn from(m: training_runs::Model) -> Self {
        TrainingRun {
            id: m.id,
            pipeline: m.pipeline,
            stage: m.stage,
            snapshot_id: m.snapshot_id,
            parent_snapshot_id: m.parent_snapshot_id,
            outcome: m.outcome,
            trigger: m.trigger,
            version: m.version,
            champion_version: m.champion_version,
            plugin_sha256: m.plugin_sha256,
            metric: m.metric,
            challenger_score: m.challenger_score,
            champion_score: m.champion_score,
            detail: m.detail,
            at_ms: m.at_ms,
        }
    }
}

impl From<model_snapshots::Model> for ModelSnapshot {
    fn from(m: model_snapshots::Model) -> Self {
        ModelSnapshot {
            id: m.id,
            pipeline: m.pipeline,
            stage: m.stage,
            plugin_sha256: m.plugin_sha256,
            parent_id: m.parent_id,
            bytes: m.bytes,
            from_offset: m.from_offset,
            to_offset: m.to_offset,
            metrics: m.metrics,
            created_at: m.created_at,
        }
    }
}

impl Store {
    /// Records a training decision and its candidate's snapshot, in one transaction.
    /// Returns the decision's row.
    pub async fn record_training(&self, r: NewTrainingRun) -> Result<TrainingRun, StoreError> {
        let txn = self.db.begin().await?;
        let snapshot_id = match r.snapshot {
            Some(bytes) => Some(
                model_snapshots::Entity::insert(model_snapshots::ActiveModel {
                    id: NotSet,
                    pipeline: Set(r.pipeline.clone()),
                    stage: Set(r.stage.clone()),
                    plugin_sha256: Set(r.plugin_sha256.clone()),
                    parent_id: Set(r.parent_snapshot_id),
                    bytes: Set(bytes),
                    from_offset: Set(r.from_offset),
                    to_offset: Set(r.to_offset),
                    metrics: Set(r.detail.clone()),
                    created_at: Set(r.at_ms),
                })
                .exec(&txn)
                .await?
                .last_insert_id,
            ),
            None => None,
        };
        let model = training_runs::Model {
            id: 0,
            pipeline: r.pipeline,
            stage: r.stage,
            snapshot_id,
            parent_snapshot_id: r.parent_snapshot_id,
            outcome: r.outcome,
            trigger: r.trigger,
            version: r.version,
            champion_version: r.champion_version,
            plugin_sha256: r.plugin_sha256,
            metric: r.metric,
            challenger_score: r.challenger_score,
            champion_score: r.champion_score,
            detail: r.detail,
            at_ms: r.at_ms,
        };
        // Every column of the row is written; the database assigns the id.
        let mut row = model.clone().into_active_model().reset_all();
        row.id = NotSet;
        let id = training_runs::Entity::insert(row)
            .exec(&txn)
            .await?
            .last_insert_id;
        txn.commit().await?;
        Ok(TrainingRun { id, ..model.into() })
    }

    /// A stage's training decisions, newest first: at most `limit`, with ids below
    /// `before` when given (for paging).
    pub async fn training_runs(
        &self,
        pipeline: &str,
        stage: &str,
        limit: u64,
        before: Option<i64>,
    ) -> Result<Vec<TrainingRun>, StoreError> {
        let mut q = training_runs::Entity::find()
            .filter(training_runs::Column::Pipeline.eq(pipeline))
            .filter(training_runs::Column::Stage.eq(stage));
        if let Some(b) = before {
            q = q.filter(training_runs::Column::Id.lt(b));
        }
        let rows = q
            .order_by_desc(training_runs::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The latest promoted decision of a stage, with its snapshot: what served last.
    pub async fn latest_promoted(
        &self,
        pipeline: &str,
        stage: &str,
    ) -> Result<Option<(TrainingRun, ModelSnapshot)>, StoreError> {
        let run = training_runs::Entity::find()
            .filter(training_runs::Column::Pipeline.eq(pipeline))
            .filter(training_runs::Column::Stage.eq(stage))
            .filter(training_runs::Column::Outcome.eq("promoted"))
            .order_by_desc(training_runs::Column::Id)
            .one(&self.db)
            .await?;
        let Some(run) = run else {
            return Ok(None);
        };
        let Some(sid) = run.snapshot_id else {
            return Ok(None);
        };
        let snap = self.snapshot(pipeline, sid).await?;
        Ok(snap.map(|s| (run.into(), s)))
    }

    /// One model snapshot of a pipeline.
    pub async fn snapshot(
        &self,
        pipeline: &str,
        id: i64,
    ) -> Result<Option<ModelSnapshot>, StoreError> {
        let row = model_snapshots::Entity::find_by_id(id)
            .filter(model_snapshots::Column::Pipeline.eq(pipeline))
            .one(&self.db)
            .await?;
        Ok(row.map(Into::into))
    }
}
