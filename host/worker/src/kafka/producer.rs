//! The producer: idempotent, `acks=all`, batching for throughput, with a bounded local queue,
//! and delivery failures that surface as errors naming their topic instead of log lines.

use anyhow::{Context, Result, anyhow};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a message may wait for its acknowledgement before it counts as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts deliveries and failures of a producer, and tracks which messages are settled
/// (acknowledged or failed for good): every message gets a sequence number when it is
/// queued, and [`Deliveries::settled`] is the number of messages from the first on that are
/// all settled, whatever order the broker acknowledged them in.
#[derive(Default)]
pub struct Deliveries {
    /// Acknowledged messages.
    pub delivered: AtomicU64,
    /// Failed messages.
    pub failed: AtomicU64,
    /// The last failure, with its topic.
    pub last_error: Mutex<Option<String>>,
    acks: Mutex<Acks>,
    changed: Condvar,
}

/// Settled sequence numbers: every one below `low` is settled; `done[i]` says whether
/// `low + i` is.
#[derive(Default)]
struct Acks {
    low: u64,
    done: VecDeque<bool>,
}

impl Deliveries {
    fn settle(&self, seq: u64) {
        let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        if seq < a.low {
            return;
        }
        let i = (seq - a.low) as usize;
        if a.done.len() <= i {
            a.done.resize(i + 1, false);
        }
        a.done[i] = true;
        let mut moved = false;
        while a.done.front() == Some(&true) {
            a.done.pop_front();
            a.low += 1;
            moved = true;
        }
        drop(a);
        if moved {
            self.changed.notify_all();
        }
    }

    /// How many messages, from the first one queued on, are all settled.
    pub fn settled(&self) -> u64 {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).low
    }

    /// Waits until the first `n` messages are settled; false after `timeout`.
    pub fn wait_settled(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        while a.low < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            a = self
                .changed
                .wait_timeout(a, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// Fails once any message was refused for good (after librdkafka's own retries), naming
    /// the topic and the broker's reason.
    pub fn check(&self) -> Result<()> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let last = self
            .last_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_default();
        Err(anyhow!(
            "{failed} output records were not delivered (last: {last})"
        ))
    }
}

/// Producer context that counts acknowledgements and settles sequence numbers.
#[derive(Clone, Default)]
pub struct CountingContext(pub Arc<Deliveries>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                if let Ok(mut g) = self.0.last_error.lock() {
                    *g = Some(format!("topic `{}`: {e}", m.topic()));
                }
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0.settle(seq as u64);
    }
}

/// Why a record could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The record is larger than the producer or the topic accepts.
    #[error("a {size}-byte record is too large for topic `{topic}`")]
    TooLarge {
        /// The topic.
        topic: String,
        /// The record's payload size.
        size: usize,
    },
    /// The broker stopped acknowledging, or refused records for good.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// An idempotent, `acks=all` producer that batches for throughput, with a thread of its own
/// serving delivery reports. Its local queue is bounded: when it is full,
/// [`Producer::send`] waits for room, so a slow broker slows the caller instead of growing
/// memory; a broker that acknowledges nothing for the delivery timeout fails the send.
pub struct Producer {
    inner: ThreadedProducer<CountingContext>,
    deliveries: Arc<Deliveries>,
    sent: u64,
    timeout: Duration,
}

impl Producer {
    /// Connects to `bootstrap`.
    pub fn new(bootstrap: &str) -> Result<Self> {
        Self::with_delivery_timeout(bootstrap, DELIVERY_TIMEOUT)
    }

    /// Connects to `bootstrap`; a message not acknowledged within `timeout` fails.
    pub fn with_delivery_timeout(bootstrap: &str, timeout: Duration) -> Result<Self> {
        let ctx = CountingContext::default();
        let deliveries = ctx.0.clone();
        let inner: ThreadedProducer<CountingContext> = super::client_config(bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // lz4: cheap, and it matters doubly on the embedded broker, whose mock
            // partitions keep only the last 5 MiB of (compressed) record batches.
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "262144")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create_with_context(ctx)
            .context("creating the Kafka producer")?;
        Ok(Producer {
            inner,
            deliveries,
            sent: 0,
            timeout,
        })
    }

    /// Queues one message, waiting for room when the local queue is full.
    pub fn send(&mut self, topic: &str, key: &str, payload: &[u8]) -> Result<(), SendError> {
        // An empty key means no key: the partitioner then spreads records over partitions.
        let seq = usize::try_from(self.sent).unwrap_or(usize::MAX);
        let mut record = BaseRecord::with_opaque_to(topic, seq).payload(payload);
        if !key.is_empty() {
            record = record.key(key.as_bytes());
        }
        let mut full_since: Option<Instant> = None;
        loop {
            match self.inner.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(500));
                    self.check()?;
                    let since = *full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.timeout {
                        return Err(anyhow!(
                            "producing to `{topic}`: the broker acknowledged nothing for {:?}",
                            self.timeout
                        )
                        .into());
                    }
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(SendError::TooLarge {
                        topic: topic.to_owned(),
                        size: payload.len(),
                    });
                }
                Err((e, _)) => return Err(anyhow!("producing to `{topic}`: {e}").into()),
            }
        }
    }

    /// The delivery counters, shared with whoever waits for acknowledgements.
    pub fn deliveries(&self) -> Arc<Deliveries> {
        self.deliveries.clone()
    }

    /// Messages acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.deliveries.delivered.load(Ordering::Relaxed)
    }

    /// Messages the broker refused for good so far.
    pub fn failed(&self) -> u64 {
        self.deliveries.failed.load(Ordering::Relaxed)
    }

    /// Messages queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Fails once any message was refused for good (after librdkafka's own retries), naming
    /// the topic and the broker's reason.
    pub fn check(&self) -> Result<()> {
        self.deliveries.check()
    }

    /// Waits until everything queued is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(timeout).context("flushing the producer")?;
        if !self.deliveries.wait_settled(self.sent, timeout) {
            return Err(anyhow!(
                "flushing the producer: acknowledgements still missing"
            ));
        }
        self.check()
    }
}
