//! Kafka I/O with rdkafka: the embedded broker (librdkafka's mock cluster, a real
//! Kafka-protocol broker on loopback), a group consumer with manual offsets, batch polling
//! and a bounded close, and an idempotent `acks=all` producer with backpressure.

use anyhow::{Context, Result, anyhow};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer as _, ProducerContext,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, producer::BaseProducer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The embedded broker.
///
/// A real Kafka-protocol broker, with one limit to know: librdkafka's mock partitions keep
/// only their last 5 MiB of record batches (compressed size; hard-coded in librdkafka), and
/// drop older ones as new ones arrive. A consumer that keeps up never notices; a topic
/// loaded far ahead of its consumers should use enough partitions (our producer compresses
/// with lz4, about 2x on the workload's JSON). A real broker has no such limit.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts a mock cluster with one broker on a random loopback port.
    pub fn start() -> Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
        Ok(EmbeddedBroker { cluster })
    }

    /// Its `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock broker does not support the CreateTopics admin API).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))
    }
}

/// Counts deliveries and failures of a producer.
#[derive(Default)]
pub struct Deliveries {
    /// Acknowledged messages.
    pub delivered: AtomicU64,
    /// Failed messages.
    pub failed: AtomicU64,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
}

/// Producer context that counts acknowledgements.
#[derive(Clone, Default)]
pub struct CountingContext(pub Arc<Deliveries>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                if let Ok(mut g) = self.0.last_error.lock() {
                    *g = Some(e.to_string());
                }
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// An idempotent, `acks=all` producer that batches for throughput. Its local queue is
/// bounded: when it is full, [`Producer::send`] polls for acknowledgements and retries, so a
/// slow broker slows the caller instead of growing memory.
pub struct Producer {
    inner: BaseProducer<CountingContext>,
    deliveries: Arc<Deliveries>,
    sent: u64,
}

impl Producer {
    /// Connects to `bootstrap`.
    pub fn new(bootstrap: &str) -> Result<Self> {
        let ctx = CountingContext::default();
        let deliveries = ctx.0.clone();
        let inner: BaseProducer<CountingContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
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
            .set("message.timeout.ms", "30000")
            .create_with_context(ctx)
            .context("creating the Kafka producer")?;
        Ok(Producer {
            inner,
            deliveries,
            sent: 0,
        })
    }

    /// Queues one message, waiting for room when the local queue is full.
    pub fn send(&mut self, topic: &str, key: &str, payload: &[u8]) -> Result<()> {
        // An empty key means no key: the partitioner then spreads records over partitions.
        let mut record = BaseRecord::to(topic).payload(payload);
        if !key.is_empty() {
            record = record.key(key.as_bytes());
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.inner.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(anyhow!("producing to {topic}: {e}")),
            }
        }
    }

    /// Serves delivery callbacks without blocking.
    pub fn poll(&self) {
        self.inner.poll(Duration::ZERO);
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

    /// Waits until everything queued is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(timeout).context("flushing the producer")?;
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let last = self
                .deliveries
                .last_error
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_default();
            return Err(anyhow!(
                "{failed} messages were not delivered (last error: {last})"
            ));
        }
        Ok(())
    }
}

/// Decides where a newly assigned partition starts: given the partitions, returns the
/// offset to start each one at (for example the next offset stored in the database).
/// Called on the consumer's thread during a rebalance.
pub type AssignHook = Arc<dyn Fn(&[i32]) -> Result<BTreeMap<i32, i64>> + Send + Sync>;

/// The consumer's rebalance context: logs assignments and revocations for the worker loop
/// and, when it has an [`AssignHook`], assigns each partition at the hook's offset instead
/// of the group's committed one.
#[derive(Clone, Default)]
pub struct RebalanceLog {
    log: Arc<Mutex<Vec<Rebalanced>>>,
    hook: Option<AssignHook>,
    hook_error: Arc<Mutex<Option<String>>>,
    topic: String,
}

/// `(assigned, partitions)`: true for an assignment, false for a revocation.
pub type Rebalanced = (bool, Vec<i32>);

impl RebalanceLog {
    fn push(&self, entry: Rebalanced) {
        if let Ok(mut g) = self.log.lock() {
            g.push(entry);
        }
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(hook) = &self.hook {
                    match hook(&parts) {
                        Ok(offsets) => {
                            for (p, o) in offsets {
                                // An explicit offset, even 0: librdkafka's mock broker
                                // was seen to answer a `Beginning` lookup with a later
                                // offset. Out of range falls back to auto.offset.reset.
                                let at = Offset::Offset(o.max(0));
                                if let Err(e) = tpl.set_partition_offset(&self.topic, p, at) {
                                    tracing::warn!("setting the start offset of {p}: {e}");
                                }
                            }
                        }
                        Err(e) => {
                            // Not assigning leaves the partitions to the group's next
                            // rebalance; the worker sees the error and stops.
                            tracing::error!("claiming partitions {parts:?} failed: {e:#}");
                            if let Ok(mut g) = self.hook_error.lock() {
                                *g = Some(format!("claiming partitions {parts:?}: {e:#}"));
                            }
                            return;
                        }
                    }
                }
                tracing::debug!("assigning {:?}", tpl.to_topic_map());
                if let Err(e) = base_consumer.assign(tpl) {
                    tracing::error!("assigning partitions {parts:?}: {e}");
                    return;
                }
                self.push((true, parts));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(e) = base_consumer.unassign() {
                    tracing::warn!("unassigning partitions {parts:?}: {e}");
                }
                self.push((false, parts));
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!("rebalance error: {code}");
                if let Err(e) = base_consumer.unassign() {
                    tracing::warn!("unassigning after a rebalance error: {e}");
                }
            }
        }
    }
}

/// A record copied out of the consumer.
pub struct Owned {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Payload (empty for a tombstone).
    pub payload: Vec<u8>,
    /// The message's timestamp (CreateTime, ms), if it has one.
    pub timestamp: Option<i64>,
}

/// A consumer-group member on one topic with manual offsets.
pub struct Consumer {
    inner: Option<BaseConsumer<RebalanceLog>>,
    rebalances: RebalanceLog,
    topic: String,
    next: BTreeMap<i32, i64>,
}

impl Consumer {
    /// Joins `group` on `topic`. Offsets are never committed automatically.
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> Result<Self> {
        Self::with_hook(bootstrap, group, topic, None)
    }

    /// Like [`Consumer::new`], with an [`AssignHook`] that decides where each assigned
    /// partition starts (Kafka's committed offsets are then only for monitoring).
    pub fn with_hook(
        bootstrap: &str,
        group: &str,
        topic: &str,
        hook: Option<AssignHook>,
    ) -> Result<Self> {
        let rebalances = RebalanceLog {
            hook,
            topic: topic.to_string(),
            ..RebalanceLog::default()
        };
        let inner: BaseConsumer<RebalanceLog> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .set("queued.min.messages", "100000")
            .set("session.timeout.ms", "10000")
            .create_with_context(rebalances.clone())
            .context("creating the Kafka consumer")?;
        inner
            .subscribe(&[topic])
            .with_context(|| format!("subscribing to {topic}"))?;
        Ok(Consumer {
            inner: Some(inner),
            rebalances,
            topic: topic.to_string(),
            next: BTreeMap::new(),
        })
    }

    /// Rebalances since the last call: `(assigned, partitions)`. Fails when the assign
    /// hook failed (the partitions were then not assigned).
    pub fn take_rebalances(&self) -> Result<Vec<Rebalanced>> {
        if let Some(e) = self
            .rebalances
            .hook_error
            .lock()
            .ok()
            .and_then(|mut g| g.take())
        {
            return Err(anyhow!(e));
        }
        Ok(self
            .rebalances
            .log
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default())
    }

    /// The partition's low and high watermarks (the high one is the offset the next
    /// produced record gets).
    pub fn watermarks(&self, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
        let c = self
            .inner
            .as_ref()
            .ok_or_else(|| anyhow!("consumer is closed"))?;
        c.fetch_watermarks(&self.topic, partition, timeout)
            .with_context(|| format!("fetching the watermarks of {}/{partition}", self.topic))
    }

    /// The next offset of every partition consumed so far.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.next.clone()
    }

    /// Commits the given next offsets to the group (asynchronously). With a database as the
    /// source of truth this is for monitoring (consumer lag) only.
    pub fn commit_offsets(&self, next: &BTreeMap<i32, i64>) -> Result<()> {
        let Some(c) = self.inner.as_ref() else {
            return Ok(());
        };
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        c.commit(&tpl, CommitMode::Async)
            .context("committing offsets")
    }

    /// Appends up to `max` more records to `out`, waiting at most `timeout` for the first one.
    pub fn poll_batch(
        &mut self,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Owned>,
    ) -> Result<()> {
        let Some(c) = self.inner.as_ref() else {
            return Err(anyhow!("consumer is closed"));
        };
        let deadline = Instant::now() + timeout;
        let start = out.len();
        while out.len() - start < max {
            let wait = if out.len() == start {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match c.poll(wait) {
                Some(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    out.push(Owned {
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        timestamp: m.timestamp().to_millis(),
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("consumer error: {e}");
                    if out.len() == start && Instant::now() >= deadline {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Commits the offsets after everything polled so far (for monitoring and restarts).
    pub fn commit(&self) -> Result<()> {
        self.commit_offsets(&self.next)
    }

    /// Leaves the group, bounded by `timeout`: librdkafka's destroy can hang against some
    /// brokers, so the close runs on its own thread and is abandoned after the timeout.
    pub fn close(mut self, timeout: Duration) {
        let Some(c) = self.inner.take() else { return };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("weir-consumer-close".into())
            .spawn(move || {
                c.unsubscribe();
                drop(c);
                let _ = tx.send(());
            });
        if spawned.is_ok() && rx.recv_timeout(timeout).is_err() {
            tracing::warn!("the Kafka consumer did not close within {timeout:?}; continuing");
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let me = Consumer {
                inner: self.inner.take(),
                rebalances: self.rebalances.clone(),
                topic: String::new(),
                next: BTreeMap::new(),
            };
            me.close(Duration::from_secs(5));
        }
    }
}
