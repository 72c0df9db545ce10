//! `POST /v1/pipelines/{id}/events`: authenticated ingestion. A tenant sends its events as
//! JSON Lines and the server writes them to the pipeline's source topic, so tenants never
//! need the broker's address (or access to anyone else's topics). A request is all or
//! nothing for validation: a line that is not a JSON object is 400 naming the line, and
//! nothing is written. The answer comes once the broker has acknowledged every record.

use super::error::{ApiError, ErrorBody};
use super::handlers::{json, tenant};
use super::manager::tenant_spec;
use super::{AppState, Reply};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;
use warp::http::StatusCode;
use weir_stream::spec::SpecBounds;

/// Most lines one request may carry.
pub const MAX_LINES: usize = 100_000;

/// What an ingestion wrote.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ingested {
    /// Records written to the source topic (and acknowledged by the broker).
    pub accepted: u64,
    /// The topic they went to.
    pub topic: String,
}

/// Writes a batch of events (JSON Lines, one object per line; blank lines are skipped) to
/// the pipeline's source topic, keyed by each event's key field.
#[utoipa::path(post, path = "/v1/pipelines/{id}/events", tag = "pipelines", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    request_body(content = String, content_type = "text/plain",
        description = "JSON Lines: one JSON object per line (any content type is accepted)"),
    responses((status = 200, description = "Written and acknowledged", body = Ingested),
              (status = 400, description = "A line is not a JSON object, or too many lines", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody),
              (status = 408, description = "The body was too slow", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 503, description = "The broker did not acknowledge", body = ErrorBody)))]
pub async fn events(
    id: i64,
    authz: Option<String>,
    body: bytes::Bytes,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    let p = super::pipelines::own(&state, tenant, id).await?;
    let spec = tenant_spec(&p.spec, tenant, &tname, &SpecBounds::unlimited())?;
    let topic = spec.source.topic.get_ref().clone();
    let key_field = spec.source.key_field.clone();
    let records = split(&body, &key_field)?;
    let n = records.len() as u64;
    let permit = state
        .ingest
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let bootstrap = state.manager.kafka();
    let to = topic.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let _permit = permit;
        let mut producer = weir_worker::kafka::Producer::new(&bootstrap)?;
        for (key, line) in &records {
            producer.send(&to, key, &body[line.clone()])?;
        }
        producer.flush(Duration::from_secs(30))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::unavailable(format!("writing to `{topic}`: {e:#}")))?;
    Ok(json(StatusCode::OK, &Ingested { accepted: n, topic }))
}

/// The body's non-blank lines as (key, byte range), each checked to be a JSON object.
fn split(body: &[u8], key_field: &str) -> Result<Vec<(String, std::ops::Range<usize>)>, ApiError> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let lead = raw.len() - raw.trim_ascii_start().len();
        let trimmed = raw.trim_ascii();
        let range = start + lead..start + lead + trimmed.len();
        start += raw.len() + 1;
        if trimmed.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(trimmed)
            .map_err(|e| ApiError::bad_request(format!("line {}: {e}", i + 1)))?;
        let Some(obj) = v.as_object() else {
            return Err(ApiError::bad_request(format!(
                "line {}: expected a JSON object",
                i + 1
            )));
        };
        let key = match obj.get(key_field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        out.push((key, range));
        if out.len() > MAX_LINES {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_LINES} lines in one request"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_objects_with_their_keys() {
        let body = b"{\"key\":\"a\",\"x\":[1]}\n\n  {\"key\":7}\r\n{\"x\":1}";
        let got = split(body, "key").unwrap();
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "7", ""]);
        assert_eq!(&body[got[0].1.clone()], b"{\"key\":\"a\",\"x\":[1]}");
        assert_eq!(
            &body[got[1].1.clone()],
            b"{\"key\":7}",
            "trimmed, \\r included"
        );
        let e = split(b"{\"key\":\"a\"}\n[1,2]\n", "key").unwrap_err();
        assert_eq!(e.message, "line 2: expected a JSON object");
        let e = split(b"{\"key\":\"a\"}\n\n{oops\n", "key").unwrap_err();
        assert!(e.message.starts_with("line 3: "), "{}", e.message);
    }
}
