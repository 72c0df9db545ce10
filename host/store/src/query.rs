//! Reads. Every query filters by pipeline and orders explicitly, so results are the same on
//! every backend.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::entity::{
    api_keys, checkpoints, deployments, gaps, model_snapshots, predictions, window_results,
};
use crate::{
    Checkpoint, Deployment, Gap, ModelSnapshot, NewGap, Prediction, SourceIdentity, Store,
    StoreError, WindowResult,
};

impl From<checkpoints::Model> for Checkpoint {
    fn from(m: checkpoints::Model) -> Self {
        Checkpoint {
            pipeline: m.pipeline,
            partition: m.partition,
            next_offset: m.next_offset,
            watermark: m.watermark,
            owner_epoch: m.owner_epoch,
            commits: m.commits,
            updated_at: m.updated_at,
            source: SourceIdentity {
                cluster_id: m.cluster_id,
                topic_id: m.topic_id,
            },
            offset_base: m.offset_base,
        }
    }
}

impl From<gaps::Model> for Gap {
    fn from(m: gaps::Model) -> Self {
        Gap {
            id: m.id,
            pipeline: m.pipeline,
            gap: NewGap {
                topic: m.topic,
                partition: m.partition,
                from_offset: m.from_offset,
                to_offset: m.to_offset,
                records: m.records,
                reason: m.reason,
                detail: m.detail,
                at_ms: m.at_ms,
            },
        }
    }
}

impl From<predictions::Model> for Prediction {
    fn from(m: predictions::Model) -> Self {
        Prediction {
            partition: m.partition,
            offset: m.offset,
            key: m.key,
            ts: m.ts,
            score: m.score,
            output: m.output,
            model_version: m.model_version,
            extractor_version: m.extractor_version,
        }
    }
}

impl From<window_results::Model> for WindowResult {
    fn from(m: window_results::Model) -> Self {
        WindowResult {
            key: m.key,
            window_start: m.window_start,
            window_end: m.window_end,
            partition: m.partition,
            output: m.output,
            version: m.version,
        }
    }
}

impl Store {
    /// All predictions of a pipeline, ordered by partition and offset.
    pub async fn predictions(&self, pipeline: &str) -> Result<Vec<Prediction>, StoreError> {
        let rows = predictions::Entity::find()
            .filter(predictions::Column::Pipeline.eq(pipeline))
            .order_by_asc(predictions::Column::Partition)
            .order_by_asc(predictions::Column::Offset)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Prediction::from).collect())
    }

    /// All window results of a pipeline, ordered by key and window start.
    pub async fn window_results(&self, pipeline: &str) -> Result<Vec<WindowResult>, StoreError> {
        let rows = window_results::Entity::find()
            .filter(window_results::Column::Pipeline.eq(pipeline))
            .order_by_asc(window_results::Column::Key)
            .order_by_asc(window_results::Column::WindowStart)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(WindowResult::from).collect())
    }

    /// The checkpoint of a partition, if it was ever claimed.
    pub async fn checkpoint(
        &self,
        pipeline: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = checkpoints::Entity::find_by_id((pipeline.to_owned(), partition))
            .one(&self.db)
            .await?;
        Ok(row.map(Checkpoint::from))
    }

    /// Every partition's checkpoint of a pipeline, by partition.
    pub async fn checkpoints(&self, pipeline: &str) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = checkpoints::Entity::find()
            .filter(checkpoints::Column::Pipeline.eq(pipeline))
            .order_by_asc(checkpoints::Column::Partition)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Checkpoint::from).collect())
    }

    /// The recorded input gaps of several pipelines, oldest first.
    pub async fn gaps_of(&self, pipelines: &[String]) -> Result<Vec<Gap>, StoreError> {
        if pipelines.is_empty() {
            return Ok(Vec::new());
        }
        let rows = gaps::Entity::find()
            .filter(gaps::Column::Pipeline.is_in(pipelines.iter().map(String::as_str)))
            .order_by_asc(gaps::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Gap::from).collect())
    }

    /// A pipeline's recorded input gaps, oldest first.
    pub async fn gaps(&self, pipeline: &str) -> Result<Vec<Gap>, StoreError> {
        let rows = gaps::Entity::find()
            .filter(gaps::Column::Pipeline.eq(pipeline))
            .order_by_asc(gaps::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Gap::from).collect())
    }

    /// The newest snapshot (highest id) of a pipeline stage.
    pub async fn latest_snapshot(
        &self,
        pipeline: &str,
        stage: &str,
    ) -> Result<Option<ModelSnapshot>, StoreError> {
        let row = model_snapshots::Entity::find()
            .filter(model_snapshots::Column::Pipeline.eq(pipeline))
            .filter(model_snapshots::Column::Stage.eq(stage))
            .order_by_desc(model_snapshots::Column::Id)
            .one(&self.db)
            .await?;
        Ok(row.map(Into::into))
    }

    /// The deployment history of a pipeline, oldest first.
    pub async fn deployments(&self, pipeline: &str) -> Result<Vec<Deployment>, StoreError> {
        let rows = deployments::Entity::find()
            .filter(deployments::Column::Pipeline.eq(pipeline))
            .order_by_asc(deployments::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| Deployment {
                id: m.id,
                pipeline: m.pipeline,
                stage: m.stage,
                plugin_sha256: m.plugin_sha256,
                version_label: m.version_label,
                actor: m.actor,
                at_ms: m.at_ms,
                partition: m.partition,
                offset: m.offset,
            })
            .collect())
    }

    /// The tenant owning the API key with this hex SHA-256, unless the key is revoked.
    pub async fn tenant_for_key_hash(&self, key_hash: &str) -> Result<Option<i64>, StoreError> {
        let row = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(key_hash))
            .filter(api_keys::Column::Revoked.eq(false))
            .one(&self.db)
            .await?;
        Ok(row.map(|m| m.tenant_id))
    }
}
