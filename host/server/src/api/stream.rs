//! `GET /v1/pipelines/{id}/predictions/stream`: a pipeline's predictions as server-sent
//! events, as their checkpoints commit them (so each is sent once it is durable, and never
//! one that a crash would take back).
//!
//! Each event is `event: prediction` with a [`PredictionRow`] as its JSON data. The last
//! event of each batch carries an `id:`, a signed cursor of the position reached in every
//! partition: a client that reconnects with it (`Last-Event-ID`, as browsers do, or
//! `?cursor=`) goes on exactly where it stopped. Without one the stream starts at the
//! newest stored prediction (`?from=start`: at the oldest). Tenancy is the API's: another
//! tenant's pipeline is 404, and the cursor is bound to the tenant and the pipeline.

use super::auth::CursorBody;
use super::error::{ApiError, ErrorBody};
use super::handlers::tenant;
use super::manager::internal_name;
use super::pipelines::{PredictionRow, own};
use super::{AppState, Reply};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::IntoParams;
use warp::Reply as _;
use warp::sse::Event;

/// How often the stream looks for newly committed predictions when it has none to send.
const POLL: Duration = Duration::from_millis(200);
/// How often it looks for partitions it has not seen yet.
const DISCOVER: Duration = Duration::from_secs(2);
/// Rows read per partition per look.
const CHUNK: u64 = 500;

/// Where a stream starts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// `now` (the default: predictions committed from now on) or `start` (every stored
    /// prediction first).
    pub from: Option<String>,
    /// Resume after this cursor (an event's `id`); the `Last-Event-ID` header does the same.
    pub cursor: Option<String>,
    /// Only this key's predictions.
    pub key: Option<String>,
}

/// The committed predictions of a pipeline, live (`text/event-stream`).
#[utoipa::path(get, path = "/v1/pipelines/{id}/predictions/stream", tag = "results", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1), StreamQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a cursor)")),
    responses((status = 200, description = "Server-sent events: `event: prediction`, `data:` a PredictionRow as JSON; the last event of each batch has an `id:` to resume from", content_type = "text/event-stream", body = String),
              (status = 400, description = "Bad `from` or cursor", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn predictions(
    id: i64,
    authz: Option<String>,
    last_event_id: Option<String>,
    q: StreamQuery,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    let pipeline = internal_name(tenant, &p.name);
    let positions: BTreeMap<i32, i64> = match last_event_id.or(q.cursor) {
        Some(c) => state
            .cursors
            .open(&c, tenant, id, "stream")?
            .pos
            .unwrap_or_default()
            .into_iter()
            .collect(),
        None => match q.from.as_deref() {
            None | Some("now") => state
                .store
                .prediction_heads(&pipeline)
                .await
                .map_err(ApiError::from)?,
            Some("start") => BTreeMap::new(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`from` is `now` or `start`, not `{other}`"
                ))
                .into());
            }
        },
    };
    let tail = Tail {
        state: state.clone(),
        tenant,
        id,
        pipeline,
        key: q.key,
        positions,
        known: Vec::new(),
        discovered: None,
        queue: VecDeque::new(),
    };
    // The reads run in a task of their own, handing events over a bounded channel: the
    // stream the response owns must be `Sync`, and the task ends when the client goes
    // (its next send fails).
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut tail = tail;
        loop {
            // A client gone while nothing is committed ends the task too.
            let e = tokio::select! {
                e = tail.next() => e,
                () = tx.closed() => None,
            };
            let Some(e) = e else { break };
            if tx.send(e).await.is_err() {
                break;
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        Some((Ok::<Event, Infallible>(e), rx))
    });
    let keep_alive = warp::sse::keep_alive().interval(Duration::from_secs(15));
    Ok(warp::sse::reply(keep_alive.stream(events)).into_response())
}

/// A stream's state: where it is in each partition, and events read but not sent yet.
struct Tail {
    state: Arc<AppState>,
    tenant: i64,
    id: i64,
    pipeline: String,
    key: Option<String>,
    positions: BTreeMap<i32, i64>,
    /// Partitions with predictions (looked up every [`DISCOVER`]).
    known: Vec<i32>,
    discovered: Option<Instant>,
    queue: VecDeque<Event>,
}

impl Tail {
    /// The next event; `None` ends the stream (the server is shutting down, or the
    /// database failed: the client reconnects with its last id).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if !self.state.is_ready() {
                return None;
            }
            match self.read().await {
                Ok(true) => {}
                Ok(false) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    tracing::warn!("predictions stream of {}: {}", self.pipeline, e.message);
                    return None;
                }
            }
        }
    }

    /// Reads what was committed since the last look into the queue; false when nothing was.
    async fn read(&mut self) -> Result<bool, ApiError> {
        let store = &self.state.store;
        if self.discovered.is_none_or(|at| at.elapsed() >= DISCOVER) {
            self.known = store
                .prediction_heads(&self.pipeline)
                .await?
                .into_keys()
                .collect();
            self.discovered = Some(Instant::now());
        }
        let mut rows = Vec::new();
        for &partition in &self.known {
            let after = self.positions.get(&partition).copied();
            let got = store
                .predictions_of_partition(
                    &self.pipeline,
                    partition,
                    after,
                    self.key.as_deref(),
                    CHUNK,
                )
                .await?;
            if let Some(last) = got.last() {
                self.positions.insert(partition, last.offset);
            }
            rows.extend(got);
        }
        if rows.is_empty() {
            return Ok(false);
        }
        let cursor = self.state.cursors.sign(&CursorBody {
            t: self.tenant,
            p: self.id,
            k: "stream".into(),
            po: None,
            kw: None,
            pos: Some(self.positions.iter().map(|(&p, &o)| (p, o)).collect()),
        });
        let n = rows.len();
        for (i, r) in rows.into_iter().enumerate() {
            let data =
                serde_json::to_string(&PredictionRow::from(r)).map_err(ApiError::internal)?;
            let mut e = Event::default().event("prediction").data(data);
            if i + 1 == n {
                e = e.id(cursor.clone());
            }
            self.queue.push_back(e);
        }
        Ok(true)
    }
}
