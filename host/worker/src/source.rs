//! A worker's input: the consumer, the partitions it owns with their stream positions, and
//! the gap checks (see [`crate::gaps`]).
//!
//! Where a partition starts is decided when it is assigned, on the consumer's thread: its
//! stored position is *claimed* (in the database, with a new owner epoch and the
//! partition's keyed state; or, for at-least-once runs, the group's committed offset) and
//! compared with what the broker says about the log, and the partition is assigned at the
//! offset that decision gives (or not at all, when the spec says a gap stops the pipeline).
//! While running, records whose offsets jump are judged the same way, and an out-of-range
//! position (librdkafka's `auto.offset.reset` is `error`, so it never jumps on its own) is
//! judged once librdkafka's statistics say which partition stopped.

use crate::gaps::{self, GapPolicy, Position, Resume};
use crate::kafka::{AssignHook, Consumer, LogBounds, Membership, Owned, SourceAlert, SourceLog};
use anyhow::{Context, Result, anyhow};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use weir_store::{NewGap, SourceIdentity, StateEntry, Store};
use weir_stream::spec::OnGap;

/// A partition this worker owns.
#[derive(Debug, Clone)]
pub struct Owning {
    /// The owner epoch its checkpoints carry (0 without a database).
    pub epoch: i64,
    /// Where it stands.
    pub position: Position,
    /// The broker offset where an `until_end` run stops (the log's end at assignment).
    pub end: Option<i64>,
    /// Gaps to record with the next checkpoint.
    pub gaps: Vec<NewGap>,
}

/// A partition assignment or revocation, for the pipeline.
pub enum Change {
    /// A partition was claimed: restore its watermark and keyed state.
    Assigned {
        /// The partition.
        partition: i32,
        /// Its committed watermark.
        watermark: i64,
        /// Its keyed state.
        state: Vec<StateEntry>,
    },
    /// A partition went to another worker.
    Revoked(i32),
}

/// Where a worker's positions are kept.
#[derive(Clone)]
pub enum Positions {
    /// In the database: each partition claimed with a new owner epoch, with its keyed state.
    Database {
        /// The store.
        store: Arc<Store>,
        /// The runtime its calls run on.
        rt: Handle,
        /// The pipeline's name there.
        pipeline: String,
    },
    /// The consumer group's committed offsets (at least once; no keyed state is kept).
    Kafka,
}

struct Claimed {
    epoch: i64,
    watermark: i64,
    state: Vec<StateEntry>,
    resume: Resume,
    bounds: LogBounds,
}

/// How a [`Source`] runs.
pub struct SourceOptions<'a> {
    /// Kafka bootstrap servers.
    pub bootstrap: &'a str,
    /// The consumer group (with [`Membership::All`], only the name of its committed
    /// offsets).
    pub group: &'a str,
    /// How the worker gets its partitions.
    pub membership: Membership,
    /// The topic.
    pub topic: &'a str,
    /// Where positions are kept.
    pub positions: Positions,
    /// What a gap does.
    pub on_gap: OnGap,
    /// The broker is the embedded one.
    pub embedded: bool,
    /// Remember where each partition's log ends at assignment (`until_end` runs).
    pub until_end: bool,
}

/// The worker's input.
pub struct Source {
    consumer: Consumer,
    topic: String,
    on_gap: OnGap,
    embedded: bool,
    until_end: bool,
    membership: Membership,
    claims: Arc<Mutex<HashMap<i32, Claimed>>>,
    parts: BTreeMap<i32, Owning>,
    /// An out-of-range alert waiting for statistics taken after it.
    check_since: Option<Instant>,
    /// Since when no partition is owned.
    idle_since: Option<Instant>,
    /// When the topic's partitions were last listed ([`Membership::All`]).
    listed: Instant,
    ever_assigned: bool,
    /// Records skipped as already processed, or of partitions not owned.
    pub skipped: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How often a worker that takes every partition looks for new ones.
const LIST_EVERY: Duration = Duration::from_secs(10);

/// Claims `p`: its stored position, owner epoch and keyed state.
fn claim(
    positions: &Positions,
    p: i32,
    log: &SourceLog,
) -> Result<(i64, i64, Vec<StateEntry>, Position)> {
    match positions {
        Positions::Database {
            store,
            rt,
            pipeline,
        } => {
            let c = rt
                .block_on(store.claim(pipeline, p))
                .with_context(|| format!("claiming partition {p}"))?;
            let at = Position {
                next: c.next_offset,
                base: c.offset_base,
                source: c.source,
            };
            Ok((c.epoch, c.watermark, c.state, at))
        }
        Positions::Kafka => {
            // A group that never committed starts at the log's start.
            let next = match log.committed.get(&p) {
                Some(&o) => o,
                None => log.bounds.get(&p).map_or(0, |b| b.low),
            };
            let at = Position {
                next,
                base: 0,
                source: SourceIdentity::default(),
            };
            Ok((0, i64::MIN, Vec::new(), at))
        }
    }
}

impl Source {
    /// Opens the consumer; partitions are claimed as they are assigned (at once with
    /// [`Membership::All`]).
    pub fn open(opts: SourceOptions<'_>) -> Result<Source> {
        let claims: Arc<Mutex<HashMap<i32, Claimed>>> = Arc::default();
        let hook: AssignHook = {
            let claims = claims.clone();
            let topic = opts.topic.to_owned();
            let (on_gap, embedded, positions) = (opts.on_gap, opts.embedded, opts.positions);
            Arc::new(move |parts: &[i32], log: &SourceLog| {
                let policy = GapPolicy {
                    topic: &topic,
                    on_gap,
                    embedded,
                };
                let mut offsets = BTreeMap::new();
                for &p in parts {
                    let bounds = *log
                        .bounds
                        .get(&p)
                        .ok_or_else(|| anyhow!("the broker did not describe partition {p}"))?;
                    let (epoch, watermark, state, stored) = claim(&positions, p, log)?;
                    let resume = gaps::resume(policy, p, &stored, &log.identity, bounds, now_ms())?;
                    if let Some(g) = &resume.gap {
                        tracing::warn!("{topic}/{p}: gap ({}): {}", g.reason, g.detail);
                    }
                    tracing::debug!(
                        "claimed {topic}/{p}: epoch {epoch}, position {} (offset {} of a log of {}..{})",
                        resume.position.next,
                        resume.position.broker_offset(),
                        bounds.low,
                        bounds.high
                    );
                    offsets.insert(p, resume.position.broker_offset());
                    claims
                        .lock()
                        .map_err(|_| anyhow!("claims lock poisoned"))?
                        .insert(
                            p,
                            Claimed {
                                epoch,
                                watermark,
                                state,
                                resume,
                                bounds,
                            },
                        );
                }
                tracing::info!("{topic}: claimed {} partition(s) {parts:?}", parts.len());
                Ok(offsets)
            })
        };
        let mut consumer = Consumer::with_hook(
            opts.bootstrap,
            opts.group,
            opts.topic,
            hook,
            &opts.membership,
        )?;
        if opts.membership == Membership::All {
            let all = consumer.partitions()?;
            consumer.take_partitions(&all, &BTreeMap::new())?;
        }
        Ok(Source {
            consumer,
            topic: opts.topic.to_owned(),
            on_gap: opts.on_gap,
            embedded: opts.embedded,
            until_end: opts.until_end,
            membership: opts.membership,
            claims,
            parts: BTreeMap::new(),
            check_since: None,
            idle_since: Some(Instant::now()),
            listed: Instant::now(),
            ever_assigned: false,
            skipped: 0,
        })
    }

    fn policy(&self) -> GapPolicy<'_> {
        GapPolicy {
            topic: &self.topic,
            on_gap: self.on_gap,
            embedded: self.embedded,
        }
    }

    /// The partitions owned now.
    pub fn parts(&self) -> &BTreeMap<i32, Owning> {
        &self.parts
    }

    /// How long the worker has owned no partition, if it owns none.
    pub fn idle_for(&self) -> Option<Duration> {
        self.idle_since.map(|t| t.elapsed())
    }

    /// The consumer, for offsets committed for monitoring and the close.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Gives the consumer back (to close it).
    pub fn into_consumer(self) -> Consumer {
        self.consumer
    }

    /// Polls up to `max` records into `out` and returns the partition changes that came
    /// with them (take them before looking at the records: a partition may have been
    /// assigned in this very poll).
    pub fn poll(
        &mut self,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Owned>,
    ) -> Result<Vec<Change>> {
        if self.membership == Membership::All && self.listed.elapsed() >= LIST_EVERY {
            self.take_new_partitions()?;
        }
        self.consumer.poll_batch(max, timeout, out)?;
        let mut changes = Vec::new();
        for (assigned, ps) in self.consumer.take_rebalances()? {
            for p in ps {
                if assigned {
                    let c = self
                        .claims
                        .lock()
                        .map_err(|_| anyhow!("claims lock poisoned"))?
                        .remove(&p)
                        .ok_or_else(|| anyhow!("partition {p} was assigned without a claim"))?;
                    self.parts.insert(
                        p,
                        Owning {
                            epoch: c.epoch,
                            position: c.resume.position,
                            end: self.until_end.then_some(c.bounds.high),
                            gaps: c.resume.gap.into_iter().collect(),
                        },
                    );
                    self.ever_assigned = true;
                    changes.push(Change::Assigned {
                        partition: p,
                        watermark: c.watermark,
                        state: c.state,
                    });
                } else if self.parts.contains_key(&p) {
                    // Kept until the worker has checkpointed it ([`Source::release`]).
                    changes.push(Change::Revoked(p));
                }
            }
        }
        self.idle_since = match (self.parts.is_empty(), self.idle_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(Instant::now()),
        };
        for alert in self.consumer.take_alerts() {
            match alert {
                SourceAlert::OutOfRange(text) => {
                    tracing::info!("{text}: judging the position once statistics arrive");
                    self.check_since.get_or_insert_with(Instant::now);
                }
                SourceAlert::UnknownTopic(text) => {
                    tracing::warn!("{text} (is the topic there?)");
                }
            }
        }
        Ok(changes)
    }

    /// Picks the records to process: drops replays (below a partition's position) and
    /// records of partitions not owned, judges a jump in offsets (a gap, or compaction),
    /// and advances positions. Pushes `(index, stream position)` of each kept record.
    pub fn admit(&mut self, records: &[Owned], kept: &mut Vec<(usize, i64)>) -> Result<()> {
        for (i, r) in records.iter().enumerate() {
            let Some(part) = self.parts.get(&r.partition) else {
                self.skipped += 1;
                continue;
            };
            let expected = part.position.broker_offset();
            if r.offset > expected {
                let bounds = self.bounds(r.partition)?;
                let gap = gaps::jump(
                    self.policy(),
                    r.partition,
                    &part.position,
                    r.offset,
                    bounds,
                    now_ms(),
                )?;
                let part = self.owning(r.partition)?;
                if let Some(g) = gap {
                    tracing::warn!(
                        "{}/{}: gap ({}): {}",
                        g.topic,
                        g.partition,
                        g.reason,
                        g.detail
                    );
                    part.gaps.push(g);
                }
                part.position.next = r.offset + part.position.base;
            }
            let part = self.owning(r.partition)?;
            let pos = r.offset + part.position.base;
            if pos < part.position.next {
                self.skipped += 1;
                continue;
            }
            part.position.next = pos + 1;
            kept.push((i, pos));
        }
        Ok(())
    }

    /// Forgets a revoked partition, once its last checkpoint is cut.
    pub fn release(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }

    /// The owned partitions as they stand, for a checkpoint; their gaps go with it.
    pub fn cut(&mut self) -> BTreeMap<i32, Owning> {
        let parts = self.parts.clone();
        for p in self.parts.values_mut() {
            p.gaps.clear();
        }
        parts
    }

    /// Takes partitions added to the topic since it was last listed ([`Membership::All`]).
    fn take_new_partitions(&mut self) -> Result<()> {
        self.listed = Instant::now();
        let new: Vec<i32> = self
            .consumer
            .partitions()?
            .into_iter()
            .filter(|p| !self.parts.contains_key(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        tracing::info!("{}: new partitions {new:?}", self.topic);
        let kept = self.broker_offsets();
        self.consumer.take_partitions(&new, &kept)
    }

    fn owning(&mut self, partition: i32) -> Result<&mut Owning> {
        self.parts
            .get_mut(&partition)
            .ok_or_else(|| anyhow!("partition {partition} is not owned"))
    }

    fn bounds(&self, partition: i32) -> Result<LogBounds> {
        let log = self.consumer.describe(&[partition])?;
        log.bounds
            .get(&partition)
            .copied()
            .ok_or_else(|| anyhow!("the broker did not describe partition {partition}"))
    }

    /// Judges an out-of-range position once statistics say which partitions stopped: a
    /// gap fails the worker or is recorded and skipped; a partition stopped for no reason
    /// its log explains is started again where it stands.
    pub fn judge_alerts(&mut self) -> Result<()> {
        let Some(since) = self.check_since else {
            return Ok(());
        };
        let Some(stopped) = self.consumer.stopped_partitions(since) else {
            return Ok(());
        };
        self.check_since = None;
        let stopped: Vec<i32> = stopped
            .into_iter()
            .filter(|p| self.parts.contains_key(p))
            .collect();
        if stopped.is_empty() {
            tracing::debug!("an out-of-range alert, but no owned partition stopped");
            return Ok(());
        }
        let log = self.consumer.describe(&stopped)?;
        for p in stopped {
            let bounds = *log
                .bounds
                .get(&p)
                .ok_or_else(|| anyhow!("the broker did not describe partition {p}"))?;
            let policy = self.policy();
            let part = self
                .parts
                .get(&p)
                .ok_or_else(|| anyhow!("partition {p} is not owned"))?;
            let resume = gaps::resume(policy, p, &part.position, &log.identity, bounds, now_ms())?;
            let offset = resume.position.broker_offset();
            let topic = self.topic.clone();
            let part = self.owning(p)?;
            match resume.gap {
                Some(g) => {
                    tracing::warn!("{}/{p}: gap ({}): {}", g.topic, g.reason, g.detail);
                    part.gaps.push(g);
                }
                None => tracing::info!(
                    "{topic}/{p} stopped at offset {offset}, inside its log ({}..{}): fetching again",
                    bounds.low,
                    bounds.high
                ),
            }
            part.position = resume.position;
        }
        // Only a new assignment restarts a stopped fetcher.
        let offsets = self.broker_offsets();
        self.consumer.reassign(&offsets)
    }

    /// True once every owned partition reached the end it had at assignment (`until_end`).
    pub fn at_end(&self) -> bool {
        self.ever_assigned
            && self
                .parts
                .values()
                .all(|p| p.end.is_some_and(|e| p.position.broker_offset() >= e))
    }

    /// The broker offsets to commit to the group for monitoring (consumer lag).
    pub fn broker_offsets(&self) -> BTreeMap<i32, i64> {
        self.parts
            .iter()
            .map(|(p, s)| (*p, s.position.broker_offset()))
            .collect()
    }
}
