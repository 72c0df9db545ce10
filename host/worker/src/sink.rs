//! The output edge: a batch's outputs to their topics. A record too large for its topic
//! becomes a dead letter that says so; a dead letter that cannot be written is an error.

use crate::kafka::{Producer, SendError};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use weir_stream::pipeline::{Outputs, SinkRecord, push_json_str};
use weir_stream::spec::SinkSpec;

/// Sends a batch's outputs to the sink's topics (results, windows, late events, dead
/// letters) and serves delivery reports. A result or window record too large for its topic
/// becomes a dead letter that says so (without the record); a dead letter that cannot be
/// written is an error.
pub fn produce_outputs(producer: &mut Producer, sink: &SinkSpec, out: &mut Outputs) -> Result<()> {
    let mut oversize = Vec::new();
    let mut send = |producer: &mut Producer, topic: &str, r: &SinkRecord| -> Result<()> {
        match producer.send(topic, &r.key, r.payload.as_bytes()) {
            Ok(()) => Ok(()),
            Err(SendError::TooLarge { topic, size }) => {
                oversize.push(too_large(&topic, size, r));
                Ok(())
            }
            Err(SendError::Failed(e)) => Err(e),
        }
    };
    for r in &out.results {
        send(producer, &sink.topic, r)?;
    }
    if let Some(t) = &sink.windows_topic {
        for r in &out.windows {
            send(producer, t, r)?;
        }
    }
    if let Some(t) = &sink.late_topic {
        for r in &out.late {
            send(producer, t, r)?;
        }
    }
    if !out.shadow.is_empty() {
        let topic = sink.shadow_topic();
        for r in &out.shadow {
            send(producer, &topic, r)?;
        }
    }
    out.dead.append(&mut oversize);
    for r in &out.dead {
        producer
            .send(&sink.dead_letter_topic, &r.key, r.payload.as_bytes())
            .with_context(|| {
                format!(
                    "writing a dead letter to `{}` (records that fail must not vanish)",
                    sink.dead_letter_topic
                )
            })?;
    }
    Ok(())
}

/// The dead letter for an output record its topic would not take.
fn too_large(topic: &str, size: usize, r: &SinkRecord) -> SinkRecord {
    let mut p = String::with_capacity(160);
    p.push_str("{\"reason\":\"output too large for its topic\",\"stage\":\"sink\",\"topic\":");
    push_json_str(&mut p, topic);
    let _ = write!(
        p,
        ",\"bytes\":{size},\"key\":{},\"partition\":{},\"offset\":{}}}",
        serde_json::Value::from(r.key.as_str()),
        r.meta.partition,
        r.meta.offset
    );
    SinkRecord {
        key: r.key.clone(),
        payload: p,
        meta: r.meta.clone(),
    }
}
