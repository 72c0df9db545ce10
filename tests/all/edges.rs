//! The output edge loses nothing silently: a record too large for its topic becomes a dead
//! letter that says so, a record the broker never acknowledges fails the producer with its
//! topic, and a dead letter that cannot be written is an error.

use std::time::{Duration, Instant};
use weir_stream::pipeline::{Outputs, RecordMeta};
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Consumer, EmbeddedBroker, Owned, Producer};
use weir_worker::produce_outputs;

fn meta(offset: i64) -> RecordMeta {
    RecordMeta {
        partition: 0,
        offset,
        ..RecordMeta::default()
    }
}

fn sink() -> weir_stream::spec::SinkSpec {
    PipelineSpec::parse(
        "name = \"edges\"\n[source]\ntopic = \"in\"\ninputs_field = \"x\"\ninput_dims = 1\n\
         [sink]\ntopic = \"out\"\ndead_letter_topic = \"dlq\"\n",
    )
    .unwrap()
    .sink
}

/// Everything on `topic`, waiting for `n` records.
fn read(kafka: &str, topic: &str, n: usize) -> Vec<Owned> {
    let mut c = Consumer::new(kafka, &format!("edges-{topic}"), topic).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    while out.len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {n} on {topic}",
            out.len()
        );
        c.poll_batch(100, Duration::from_millis(100), &mut out)
            .unwrap();
    }
    out
}

#[test]
fn an_output_too_large_for_its_topic_becomes_a_dead_letter() {
    let broker = EmbeddedBroker::start().unwrap();
    for t in ["out", "dlq"] {
        broker.create_topic(t, 1).unwrap();
    }
    let kafka = broker.bootstrap();
    let mut producer = Producer::new(&kafka).unwrap();
    let mut out = Outputs::default();
    // librdkafka refuses messages over `message.max.bytes` (1 MB by default) itself.
    let huge = format!("{{\"v\":\"{}\"}}", "x".repeat(2 << 20));
    out.results.push("u1", b"{\"v\":1}", meta(10));
    out.results.push("u2", huge.as_bytes(), meta(11));
    out.results.push("u3", b"{\"v\":3}", meta(12));
    produce_outputs(&mut producer, &sink(), &mut out).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(out.dead.len(), 1);

    let results = read(&kafka, "out", 2);
    let offsets: Vec<i64> = results
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["v"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [1, 3]);
    let dead = read(&kafka, "dlq", 1);
    let d: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(d["reason"], "output too large for its topic");
    assert_eq!(d["topic"], "out");
    assert_eq!(d["bytes"].as_u64(), Some(huge.len() as u64));
    assert_eq!(
        (d["key"].as_str(), d["offset"].as_i64()),
        (Some("u2"), Some(11))
    );

    // A dead letter too large for the dead-letter topic is an error, never dropped.
    let mut out = Outputs::default();
    out.dead.push("u4", huge.as_bytes(), meta(13));
    let e = produce_outputs(&mut producer, &sink(), &mut out).unwrap_err();
    assert!(
        format!("{e:#}").contains("writing a dead letter to `dlq`"),
        "{e:#}"
    );
}

#[test]
fn records_the_broker_never_acknowledges_fail_the_producer_with_their_topic() {
    // Nothing listens on port 1: every delivery times out.
    let mut producer =
        Producer::with_delivery_timeout("127.0.0.1:1", Duration::from_millis(500)).unwrap();
    producer.send("scores", "k", b"{}").unwrap();
    let started = Instant::now();
    let e = producer.flush(Duration::from_secs(10)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = format!("{e:#}");
    assert!(
        text.contains("1 output records were not delivered") && text.contains("topic `scores`"),
        "{text}"
    );
    assert!(producer.check().is_err(), "the failure stays visible");
}
