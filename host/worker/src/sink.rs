//! The output edge: a batch's outputs to their topics. A record too large for its topic
//! becomes a dead letter that says so; a dead letter that cannot be written is an error.

use crate::kafka::{Producer, SendError};
use anyhow::{Context, Result};
use weir_stream::pipeline::{Outputs, Record, RecordMeta, Records, push_i64, push_json_str};
use weir_stream::spec::SinkSpec;

/// Sends a batch's outputs to the sink's topics (results, windows, late events, shadow
/// scores, dead letters). A record too large for its topic becomes a dead letter that says
/// so (without the record); a dead letter that cannot be written is an error.
pub fn produce_outputs(producer: &mut Producer, sink: &SinkSpec, out: &mut Outputs) -> Result<()> {
    let mut oversize = Records::default();
    let mut send = |producer: &mut Producer, topic: &str, records: &Records| -> Result<()> {
        for r in records.iter() {
            match producer.send(topic, r.key, r.payload) {
                Ok(()) => {}
                Err(SendError::TooLarge { topic, size }) => {
                    too_large(&mut oversize, &topic, size, r)
                }
                Err(SendError::Failed(e)) => return Err(e),
            }
        }
        Ok(())
    };
    send(producer, &sink.topic, &out.results)?;
    if let Some(t) = &sink.windows_topic {
        send(producer, t, &out.windows)?;
    }
    if let Some(t) = &sink.late_topic {
        send(producer, t, &out.late)?;
    }
    if !out.shadow.is_empty() {
        send(producer, &sink.shadow_topic(), &out.shadow)?;
    }
    out.dead.append(&mut oversize);
    for r in out.dead.iter() {
        producer
            .send(&sink.dead_letter_topic, r.key, r.payload)
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
fn too_large(out: &mut Records, topic: &str, size: usize, r: Record<'_>) {
    let meta = RecordMeta {
        partition: r.meta.partition,
        offset: r.meta.offset,
        ..RecordMeta::default()
    };
    out.push_with(r.key, meta, |p| {
        p.extend_from_slice(
            b"{\"reason\":\"output too large for its topic\",\"stage\":\"sink\",\"topic\":",
        );
        push_json_str(p, topic);
        p.extend_from_slice(b",\"bytes\":");
        push_i64(p, size as i64);
        p.extend_from_slice(b",\"key\":");
        push_json_str(p, r.key);
        p.extend_from_slice(b",\"partition\":");
        push_i64(p, i64::from(r.meta.partition));
        p.extend_from_slice(b",\"offset\":");
        push_i64(p, r.meta.offset);
        p.push(b'}');
    });
}
