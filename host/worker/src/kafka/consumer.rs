//! The consumer: a group member on one topic with manual offsets, batch polling, a bounded
//! close, and no implicit offset resets. Where a partition starts is weir's decision (an
//! [`AssignHook`] sees what the broker says about the topic first); librdkafka's
//! `auto.offset.reset` is `error`, so a position the broker cannot serve comes back as a
//! [`SourceAlert`] for the worker to judge, never as a silent jump.

use super::topic_id::topic_id;
use anyhow::{Context, Result, anyhow};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_store::SourceIdentity;

/// How long a metadata or offset query to the broker may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often librdkafka reports its statistics.
const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// Where a partition's log starts and ends, in broker offsets: `low` is the first offset the
/// broker still has, `high` the offset the next produced record gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// Log start offset.
    pub low: i64,
    /// High watermark.
    pub high: i64,
}

/// What the broker says about the source topic: which log it is, the bounds of some of its
/// partitions, and the group's committed offsets for them.
#[derive(Debug, Clone, Default)]
pub struct SourceLog {
    /// The cluster id and the topic id.
    pub identity: SourceIdentity,
    /// Bounds per partition.
    pub bounds: BTreeMap<i32, LogBounds>,
    /// The consumer group's committed offset per partition (only those it has one for).
    pub committed: BTreeMap<i32, i64>,
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// All of the topic's partitions, assigned directly: no group join (a start takes no
    /// rebalance), and a worker that restarts owns its partitions at once. The group id only
    /// names the offsets committed for monitoring. Two workers that both take everything
    /// fence each other through the database's owner epochs.
    All,
    /// A share of the partitions, from a consumer group the workers of a pipeline join.
    Group,
}

/// Decides where newly assigned partitions start: given the partitions and what the broker
/// says about them, returns the broker offset to start each one at (for example the next
/// offset stored in the database, or the first one the broker still has). Called on the
/// consumer's thread during a rebalance; an error leaves the partitions unassigned and is
/// reported by the next [`Consumer::take_rebalances`].
pub type AssignHook = Arc<dyn Fn(&[i32], &SourceLog) -> Result<BTreeMap<i32, i64>> + Send + Sync>;

/// Something the broker said while polling that the worker must judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAlert {
    /// A partition's position is outside its log (`auto.offset.reset = error`): records were
    /// deleted under it, or the topic was replaced. The partition stops until it is sought.
    OutOfRange(String),
    /// The topic or a partition is not there.
    UnknownTopic(String),
}

/// The consumer's rebalance context: logs assignments and revocations for the worker loop
/// and, when it has an [`AssignHook`], assigns each partition at the hook's offset instead
/// of the group's committed one.
#[derive(Clone, Default)]
pub struct RebalanceLog {
    log: Arc<Mutex<Vec<Rebalanced>>>,
    hook: Option<AssignHook>,
    hook_error: Arc<Mutex<Option<String>>>,
    topic: String,
    /// librdkafka's latest statistics; parsed only when needed.
    stats: Arc<Mutex<Option<StatsSnapshot>>>,
}

/// librdkafka's statistics (JSON), and when they came.
type StatsSnapshot = (Instant, Vec<u8>);

/// `(assigned, partitions)`: true for an assignment, false for a revocation.
pub type Rebalanced = (bool, Vec<i32>);

impl RebalanceLog {
    fn push(&self, entry: Rebalanced) {
        if let Ok(mut g) = self.log.lock() {
            g.push(entry);
        }
    }

    fn fail(&self, message: String) {
        tracing::error!("{message}");
        if let Ok(mut g) = self.hook_error.lock() {
            *g = Some(message);
        }
    }
}

impl ClientContext for RebalanceLog {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(mut g) = self.stats.lock() {
            let buf = g.get_or_insert_with(|| (Instant::now(), Vec::new()));
            buf.0 = Instant::now();
            buf.1.clear();
            buf.1.extend_from_slice(statistics);
        }
    }
}

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
                    let decided = describe(base_consumer, &self.topic, &parts)
                        .and_then(|log| hook(&parts, &log));
                    match decided {
                        Ok(offsets) => {
                            for (p, o) in offsets {
                                // An explicit offset, even 0: librdkafka's mock broker
                                // was seen to answer a `Beginning` lookup with a later
                                // offset.
                                let at = Offset::Offset(o.max(0));
                                if let Err(e) = tpl.set_partition_offset(&self.topic, p, at) {
                                    tracing::warn!("setting the start offset of {p}: {e}");
                                }
                            }
                        }
                        Err(e) => {
                            // Not assigning leaves the partitions to the group's next
                            // rebalance; the worker sees the error and stops.
                            self.fail(format!("starting partitions {parts:?}: {e:#}"));
                            return;
                        }
                    }
                }
                tracing::debug!("assigning {:?}", tpl.to_topic_map());
                if let Err(e) = base_consumer.assign(tpl) {
                    self.fail(format!("assigning partitions {parts:?}: {e}"));
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

/// Asks the broker which log `topic` is and where the logs of `partitions` start and end.
fn describe<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
) -> Result<SourceLog> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let mut committed = BTreeMap::new();
    for e in consumer
        .committed_offsets(tpl, QUERY_TIMEOUT)
        .with_context(|| format!("reading the group's committed offsets of {topic}"))?
        .elements()
    {
        if let Offset::Offset(o) = e.offset() {
            committed.insert(e.partition(), o);
        }
    }
    let client = consumer.client();
    let cluster_id = client.fetch_cluster_id(QUERY_TIMEOUT);
    // librdkafka's mock cluster (the embedded broker, and `weir broker`) names no controller,
    // and DescribeTopics waits for one: it is known by its cluster id (a new one per broker)
    // and its offsets alone.
    let mock = cluster_id
        .as_deref()
        .is_some_and(|c| c.starts_with("mockCluster"));
    let topic_id = if mock {
        None
    } else {
        match topic_id(client, topic, QUERY_TIMEOUT) {
            Ok(id) => id,
            Err(e) => {
                // Brokers without topic ids (or without the DescribeTopics API) still get
                // the checks on offsets; only a recreated topic goes unnoticed by its id.
                tracing::debug!("no topic id for `{topic}`: {e}");
                None
            }
        }
    };
    let identity = SourceIdentity {
        cluster_id,
        topic_id,
    };
    let mut bounds = BTreeMap::new();
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, QUERY_TIMEOUT)
            .with_context(|| format!("asking the broker where {topic}/{p} starts and ends"))?;
        bounds.insert(p, LogBounds { low, high });
    }
    Ok(SourceLog {
        identity,
        bounds,
        committed,
    })
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
    alerts: Vec<SourceAlert>,
    errors: u64,
    last_error: Option<String>,
    last_warned: Option<Instant>,
}

impl Consumer {
    /// Joins `group` on `topic`, starting where the group left off (or at the beginning).
    /// Offsets are never committed automatically. (For readers and tests: a worker's
    /// consumer is [`Consumer::with_hook`].)
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> Result<Self> {
        Self::open(bootstrap, group, topic, None, &Membership::Group)
    }

    /// A consumer whose [`AssignHook`] decides where each partition it gets starts:
    /// assigned all of them at once, or by the consumer group.
    pub fn with_hook(
        bootstrap: &str,
        group: &str,
        topic: &str,
        hook: AssignHook,
        membership: &Membership,
    ) -> Result<Self> {
        Self::open(bootstrap, group, topic, Some(hook), membership)
    }

    fn open(
        bootstrap: &str,
        group: &str,
        topic: &str,
        hook: Option<AssignHook>,
        membership: &Membership,
    ) -> Result<Self> {
        // Without a hook nothing decides where a partition starts, so a new group starts at
        // the beginning; with one, an unservable position is an error the worker judges.
        let reset = if hook.is_some() { "error" } else { "earliest" };
        let rebalances = RebalanceLog {
            hook,
            topic: topic.to_string(),
            ..RebalanceLog::default()
        };
        let inner: BaseConsumer<RebalanceLog> = super::client_config(bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            .set("fetch.wait.max.ms", "5")
            .set("queued.min.messages", "100000")
            // Smaller fetches per partition interleave the partitions of a backlog in the
            // queue. With the default 1 MiB it arrives in long runs of one partition, and as
            // the watermark is the minimum over partitions, windows fire late and their panes
            // hold every row meanwhile. (librdkafka's mock cluster ignores this limit.)
            .set("max.partition.fetch.bytes", "262144")
            .set("session.timeout.ms", "10000")
            // Statistics say which partitions stopped fetching (after an out-of-range
            // position), which the error itself does not.
            .set(
                "statistics.interval.ms",
                STATS_INTERVAL.as_millis().to_string(),
            )
            .create_with_context(rebalances.clone())
            .context("creating the Kafka consumer")?;
        if *membership == Membership::Group {
            inner
                .subscribe(&[topic])
                .with_context(|| format!("subscribing to {topic}"))?;
        }
        Ok(Consumer {
            inner: Some(inner),
            rebalances,
            topic: topic.to_string(),
            next: BTreeMap::new(),
            alerts: Vec::new(),
            errors: 0,
            last_error: None,
            last_warned: None,
        })
    }

    fn client(&self) -> Result<&BaseConsumer<RebalanceLog>> {
        self.inner
            .as_ref()
            .ok_or_else(|| anyhow!("the consumer is closed"))
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
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

    /// Alerts since the last call.
    pub fn take_alerts(&mut self) -> Vec<SourceAlert> {
        std::mem::take(&mut self.alerts)
    }

    /// Other consumer errors so far (the broker unreachable, for example), and the last one.
    pub fn errors(&self) -> (u64, Option<&str>) {
        (self.errors, self.last_error.as_deref())
    }

    /// The partition's low and high watermarks (the high one is the offset the next
    /// produced record gets).
    pub fn watermarks(&self, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
        self.client()?
            .fetch_watermarks(&self.topic, partition, timeout)
            .with_context(|| format!("fetching the watermarks of {}/{partition}", self.topic))
    }

    /// What the broker says about the topic and these partitions now.
    pub fn describe(&self, partitions: &[i32]) -> Result<SourceLog> {
        describe(self.client()?, &self.topic, partitions)
    }

    /// The topic's partitions, from the broker's metadata.
    pub fn partitions(&self) -> Result<Vec<i32>> {
        let md = self
            .client()?
            .fetch_metadata(Some(&self.topic), QUERY_TIMEOUT)
            .with_context(|| format!("reading the metadata of {}", self.topic))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| anyhow!("the broker does not know topic `{}`", self.topic))?;
        if let Some(e) = t.error() {
            let code: RDKafkaErrorCode = e.into();
            return Err(anyhow!("topic `{}`: {code}", self.topic));
        }
        Ok(t.partitions().iter().map(|p| p.id()).collect())
    }

    /// Takes `partitions` without a group (see [`Membership::All`]) on top of `kept`, which
    /// it owns already at the given broker offsets: the hook decides where the new ones
    /// start, and they are reported as assigned by the next [`Consumer::take_rebalances`].
    pub fn take_partitions(&mut self, partitions: &[i32], kept: &BTreeMap<i32, i64>) -> Result<()> {
        let hook = self
            .rebalances
            .hook
            .clone()
            .ok_or_else(|| anyhow!("taking partitions needs an assign hook"))?;
        let log = self.describe(partitions)?;
        let mut offsets = hook(partitions, &log)?;
        offsets.extend(kept.iter().map(|(p, o)| (*p, *o)));
        self.reassign(&offsets)?;
        self.rebalances.push((true, partitions.to_vec()));
        Ok(())
    }

    /// Assigns these partitions again, each at its broker offset: after an out-of-range
    /// position stopped a partition's fetcher, only a new assignment starts it again (a seek
    /// is refused then). Records prefetched for the others are dropped and fetched again
    /// from the given offsets, so give every owned partition its exact position.
    pub fn reassign(&mut self, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        self.client()?
            .assign(&tpl)
            .with_context(|| format!("assigning {} again at {offsets:?}", self.topic))?;
        self.next.extend(offsets.iter().map(|(p, o)| (*p, *o)));
        Ok(())
    }

    /// The partitions of the topic whose fetcher has stopped (after an out-of-range
    /// position), from statistics taken after `since`; `None` until such statistics came.
    pub fn stopped_partitions(&self, since: Instant) -> Option<Vec<i32>> {
        let g = self.rebalances.stats.lock().ok()?;
        let (at, json) = g.as_ref()?;
        if *at <= since {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let parts = v
            .get("topics")?
            .get(&self.topic)?
            .get("partitions")?
            .as_object()?;
        Some(
            parts
                .values()
                .filter(|p| p.get("fetch_state").and_then(|s| s.as_str()) == Some("none"))
                .filter_map(|p| p.get("partition").and_then(|n| n.as_i64()))
                .filter_map(|n| i32::try_from(n).ok())
                .filter(|&n| n >= 0)
                .collect(),
        )
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

    /// Appends up to `max` more records to `out`, waiting at most `timeout` for the first
    /// one. Returns early when the broker raises a [`SourceAlert`].
    pub fn poll_batch(
        &mut self,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Owned>,
    ) -> Result<()> {
        let Some(c) = self.inner.as_ref() else {
            return Err(anyhow!("the consumer is closed"));
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
                    let text = format!("{}: {e}", self.topic);
                    match e.rdkafka_error_code() {
                        Some(RDKafkaErrorCode::AutoOffsetReset) => {
                            self.alerts.push(SourceAlert::OutOfRange(text));
                            break;
                        }
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownTopic
                            | RDKafkaErrorCode::UnknownPartition,
                        ) => {
                            self.alerts.push(SourceAlert::UnknownTopic(text));
                            break;
                        }
                        _ => {
                            self.errors += 1;
                            if self
                                .last_warned
                                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                            {
                                tracing::warn!("consumer error: {text}");
                                self.last_warned = Some(Instant::now());
                            }
                            self.last_error = Some(text);
                            if out.len() == start && Instant::now() >= deadline {
                                break;
                            }
                        }
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
        close(self.inner.take(), timeout);
    }
}

fn close(consumer: Option<BaseConsumer<RebalanceLog>>, timeout: Duration) {
    let Some(c) = consumer else { return };
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

impl Drop for Consumer {
    fn drop(&mut self) {
        close(self.inner.take(), Duration::from_secs(5));
    }
}
