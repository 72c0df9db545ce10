//! A durable worker's input: the consumer, the partitions it owns with their stream
//! positions, and the gap checks (see [`crate::gaps`]).
//!
//! Each assigned partition is claimed in the database on the consumer's thread, during the
//! rebalance: the claim's stored position is compared with what the broker says about the
//! log, and the partition is assigned at the offset that decision gives (or not at all, when
//! the spec says a gap stops the pipeline). While running, records whose offsets jump are
//! judged the same way, and an out-of-range position (librdkafka's `auto.offset.reset` is
//! `error`, so it never jumps on its own) is judged once librdkafka's statistics say which
//! partition stopped.

use crate::gaps::{self, GapPolicy, Position, Resume};
use crate::kafka::{AssignHook, Consumer, LogBounds, Owned, SourceAlert, SourceLog};
use anyhow::{Context, Result, anyhow};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use weir_store::{NewGap, StateEntry, Store};
use weir_stream::spec::OnGap;

/// A partition this worker owns.
#[derive(Debug, Clone)]
pub struct Owning {
    /// The owner epoch its checkpoints carry.
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
    /// The consumer group.
    pub group: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// The pipeline's name in the database.
    pub pipeline: &'a str,
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
    claims: Arc<Mutex<HashMap<i32, Claimed>>>,
    parts: BTreeMap<i32, Owning>,
    /// An out-of-range alert waiting for statistics taken after it.
    check_since: Option<Instant>,
    /// Since when no partition is owned.
    idle_since: Option<Instant>,
    ever_assigned: bool,
    /// Records skipped as already processed, or of partitions not owned.
    pub skipped: u64,
}

fn now_ms() -> i64 {
    i64::try_from(crate::run::now_ms()).unwrap_or(i64::MAX)
}

impl Source {
    /// Joins the group; partitions are claimed as they are assigned.
    pub fn open(opts: SourceOptions<'_>, store: Arc<Store>, rt: Handle) -> Result<Source> {
        let claims: Arc<Mutex<HashMap<i32, Claimed>>> = Arc::default();
        let hook: AssignHook = {
            let claims = claims.clone();
            let (name, topic) = (opts.pipeline.to_owned(), opts.topic.to_owned());
            let (on_gap, embedded) = (opts.on_gap, opts.embedded);
            Arc::new(move |parts: &[i32], log: &SourceLog| {
                let policy = GapPolicy {
                    topic: &topic,
                    on_gap,
                    embedded,
                };
                let mut offsets = BTreeMap::new();
                for &p in parts {
                    let claim = rt
                        .block_on(store.claim(&name, p))
                        .with_context(|| format!("claiming partition {p}"))?;
                    let bounds = *log
                        .bounds
                        .get(&p)
                        .ok_or_else(|| anyhow!("the broker did not describe partition {p}"))?;
                    let stored = Position {
                        next: claim.next_offset,
                        base: claim.offset_base,
                        source: claim.source.clone(),
                    };
                    let resume = gaps::resume(policy, p, &stored, &log.identity, bounds, now_ms())?;
                    if let Some(g) = &resume.gap {
                        tracing::warn!("{name}: {topic}/{p}: gap ({}): {}", g.reason, g.detail);
                    }
                    tracing::info!(
                        "claimed {name}/{p}: epoch {}, position {} (offset {} of a log of {}..{})",
                        claim.epoch,
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
                                epoch: claim.epoch,
                                watermark: claim.watermark,
                                state: claim.state,
                                resume,
                                bounds,
                            },
                        );
                }
                Ok(offsets)
            })
        };
        let consumer = Consumer::with_hook(opts.bootstrap, opts.group, opts.topic, Some(hook))?;
        Ok(Source {
            consumer,
            topic: opts.topic.to_owned(),
            on_gap: opts.on_gap,
            embedded: opts.embedded,
            until_end: opts.until_end,
            claims,
            parts: BTreeMap::new(),
            check_since: None,
            idle_since: Some(Instant::now()),
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

    /// The partitions owned now, to record gaps on.
    pub fn parts_mut(&mut self) -> &mut BTreeMap<i32, Owning> {
        &mut self.parts
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
                } else if self.parts.remove(&p).is_some() {
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
