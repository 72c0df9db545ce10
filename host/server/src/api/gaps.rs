//! Input gaps: the stretches of a pipeline's source that were lost or skipped (retention, a
//! replaced broker or topic, a restarted embedded broker), as the worker recorded them.

use super::error::{ApiError, ErrorBody};
use super::handlers::{json, tenant};
use super::manager::internal_name;
use super::{AppState, Reply};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use warp::http::StatusCode;
use weir_store::{Gap, PipelineRecord};

/// One recorded gap.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GapView {
    /// The source topic (in the tenant's namespace).
    pub topic: String,
    /// The source partition.
    pub partition: i32,
    /// The first stream position not processed.
    pub from_offset: i64,
    /// The stream position processing resumed at.
    pub to_offset: i64,
    /// Records lost, when the broker could tell.
    pub records: Option<i64>,
    /// `retention`, `beyond_end`, `source_replaced` or `broker_restarted`.
    pub reason: String,
    /// What was seen, in words.
    pub detail: String,
    /// When it was recorded, UTC ms.
    pub at_ms: i64,
}

impl From<Gap> for GapView {
    fn from(g: Gap) -> Self {
        let g = g.gap;
        GapView {
            topic: g.topic,
            partition: g.partition,
            from_offset: g.from_offset,
            to_offset: g.to_offset,
            records: g.records,
            reason: g.reason,
            detail: g.detail,
            at_ms: g.at_ms,
        }
    }
}

/// A pipeline's gaps in short.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct GapSummary {
    /// Gaps recorded.
    pub count: u64,
    /// Records lost in them, where the broker could tell.
    pub records: u64,
    /// The newest one.
    pub last: Option<GapView>,
}

/// The summary of a pipeline's gaps.
pub async fn summary(
    state: &AppState,
    tenant: i64,
    p: &PipelineRecord,
) -> Result<GapSummary, ApiError> {
    let gaps = state.store.gaps(&internal_name(tenant, &p.name)).await?;
    Ok(GapSummary {
        count: gaps.len() as u64,
        records: gaps
            .iter()
            .filter_map(|g| g.gap.records)
            .sum::<i64>()
            .max(0) as u64,
        last: gaps.into_iter().last().map(GapView::from),
    })
}

/// The pipeline's recorded input gaps, oldest first. A gap stops a pipeline unless its spec
/// says `on_gap = "skip"`; a restarted embedded broker is always recorded.
#[utoipa::path(get, path = "/v1/pipelines/{id}/gaps", tag = "pipelines", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 200, description = "Oldest first", body = [GapView]),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn list(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = super::pipelines::own(&state, tenant, id).await?;
    let list: Vec<GapView> = state
        .store
        .gaps(&internal_name(tenant, &p.name))
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(GapView::from)
        .collect();
    Ok(json(StatusCode::OK, &list))
}
