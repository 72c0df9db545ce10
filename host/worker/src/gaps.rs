//! Gaps in a pipeline's input, and what a worker does about them.
//!
//! A worker keeps, per partition, a *stream position*: the broker offset plus an offset base
//! that is 0 until the source log is replaced. Positions, results and deployments all use
//! stream positions, so they never run backwards or collide, even when a broker starts
//! again from offset 0. [`resume`] compares a stored position with what the broker says
//! about its log now, and decides:
//!
//! - the position is in the log: go on, nothing lost;
//! - it is below the log's start (retention deleted records before they were read): a gap
//!   of known size, [`GapReason::Retention`];
//! - it is past the log's end: the topic was recreated, the broker replaced, or the log
//!   truncated ([`GapReason::BeyondEnd`]);
//! - it belongs to another log (another cluster id or topic id): the old log's unread
//!   records are gone with it, [`GapReason::SourceReplaced`], or
//!   [`GapReason::BrokerRestarted`] for the embedded in-memory broker.
//!
//! By default ([`OnGap::Fail`]) a gap stops the pipeline with a [`GapError`] that names the
//! topic, partition, range and likely cause. With `on_gap = "skip"` the worker goes on and
//! the gap is recorded with the checkpoint that moves past it. A new embedded broker is
//! always a restart, never an error: its old log is gone for good, and the restart is
//! recorded the same way.

use crate::kafka::LogBounds;
use weir_store::{NewGap, SourceIdentity};
use weir_stream::spec::OnGap;

/// Where a partition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The next stream position to process.
    pub next: i64,
    /// Stream position minus broker offset.
    pub base: i64,
    /// The log it belongs to.
    pub source: SourceIdentity,
}

impl Position {
    /// The broker offset of the next record.
    pub fn broker_offset(&self) -> i64 {
        self.next - self.base
    }
}

/// Why input is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The records were deleted before they were read (retention, or deleted records).
    Retention,
    /// The stored position is past the log's end.
    BeyondEnd,
    /// The position belongs to another cluster or another incarnation of the topic.
    SourceReplaced,
    /// The embedded broker started again with empty topics.
    BrokerRestarted,
}

impl GapReason {
    /// Its name in the `gaps` table and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Retention => "retention",
            GapReason::BeyondEnd => "beyond_end",
            GapReason::SourceReplaced => "source_replaced",
            GapReason::BrokerRestarted => "broker_restarted",
        }
    }
}

/// Where a partition goes on, and the gap it moves past, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The position to go on from (in the log the broker has now).
    pub position: Position,
    /// The gap to record with the next checkpoint.
    pub gap: Option<NewGap>,
}

/// Input is missing and the spec says to stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GapError {
    /// Why.
    pub reason: GapReason,
    /// What was seen and what to do, in words.
    pub message: String,
}

/// How a worker treats gaps on one topic.
#[derive(Debug, Clone, Copy)]
pub struct GapPolicy<'a> {
    /// The source topic.
    pub topic: &'a str,
    /// The spec's choice.
    pub on_gap: OnGap,
    /// The broker is weir's embedded one (its log lives in memory only).
    pub embedded: bool,
}

const EMBEDDED_HINT: &str = " (the embedded broker keeps only the last 5 MiB of each \
    partition: use more partitions, keep the pipeline running while producing, or use \
    --kafka with a real broker)";

fn ids(s: &SourceIdentity) -> String {
    format!(
        "cluster {}, topic id {}",
        s.cluster_id.as_deref().unwrap_or("?"),
        s.topic_id.as_deref().unwrap_or("?")
    )
}

/// True when both identities are known in a part and differ there.
fn replaced(stored: &SourceIdentity, live: &SourceIdentity) -> bool {
    let differs =
        |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(x), Some(y)) if x != y);
    differs(&stored.cluster_id, &live.cluster_id) || differs(&stored.topic_id, &live.topic_id)
}

/// Decides where a partition goes on from `stored`, given the log the broker has now.
pub fn resume(
    policy: GapPolicy<'_>,
    partition: i32,
    stored: &Position,
    live: &SourceIdentity,
    bounds: LogBounds,
    now_ms: i64,
) -> Result<Resume, GapError> {
    let topic = policy.topic;
    let skip = policy.on_gap == OnGap::Skip;
    let offset = stored.broker_offset();
    let here = format!("topic `{topic}` partition {partition}");
    let gap = |reason: GapReason, to: i64, records: Option<i64>, detail: String| NewGap {
        topic: topic.to_owned(),
        partition,
        from_offset: stored.next,
        to_offset: to,
        records,
        reason: reason.as_str().to_owned(),
        detail,
        at_ms: now_ms,
    };
    // The new log's first record continues the stream where the old log stopped.
    let restart = |reason: GapReason, detail: String| Resume {
        position: Position {
            next: stored.next,
            base: stored.next - bounds.low,
            source: live.clone(),
        },
        gap: Some(gap(reason, stored.next, None, detail)),
    };
    let skip_hint = |to: i64| {
        format!(
            " The pipeline stops so that nothing is skipped silently; set `on_gap = \"skip\"` \
             under [source] to go on from offset {to} and record the gap."
        )
    };

    if replaced(&stored.source, live) {
        if policy.embedded {
            return Ok(restart(
                GapReason::BrokerRestarted,
                format!(
                    "the embedded broker started again with empty topics ({}; the stored \
                     position was offset {offset} of {}): its records after that offset, if \
                     any, were lost when it stopped; processing goes on at offset {} of the \
                     new log",
                    ids(live),
                    ids(&stored.source),
                    bounds.low
                ),
            ));
        }
        let detail = format!(
            "the stored position, offset {offset}, belongs to another log ({}) than the topic \
             has now ({}): the broker was replaced or the topic recreated, and the old log's \
             records after offset {offset} cannot be read",
            ids(&stored.source),
            ids(live)
        );
        if !skip {
            return Err(GapError {
                reason: GapReason::SourceReplaced,
                message: format!("input lost: {here}: {detail}.{}", skip_hint(bounds.low)),
            });
        }
        return Ok(restart(
            GapReason::SourceReplaced,
            format!(
                "{detail}; processing goes on at offset {} of the new log",
                bounds.low
            ),
        ));
    }

    let position = |next: i64, base: i64| Position {
        next,
        base,
        source: live.clone(),
    };
    if offset < bounds.low {
        let lost = bounds.low - offset;
        let detail = format!(
            "offsets {offset}..{} ({lost} records) are no longer on the broker, whose log \
             starts at {}: they were deleted (retention) before this pipeline read them",
            bounds.low - 1,
            bounds.low
        );
        // librdkafka's mock cluster, in this process or run as `weir broker`.
        let mock = policy.embedded
            || live
                .cluster_id
                .as_deref()
                .is_some_and(|c| c.starts_with("mockCluster"));
        let hint = if mock { EMBEDDED_HINT } else { "" };
        if !skip {
            return Err(GapError {
                reason: GapReason::Retention,
                message: format!(
                    "input lost: {here}: {detail}{hint}.{}",
                    skip_hint(bounds.low)
                ),
            });
        }
        let next = stored.next + lost;
        return Ok(Resume {
            position: position(next, stored.base),
            gap: Some(gap(GapReason::Retention, next, Some(lost), detail)),
        });
    }
    if offset > bounds.high {
        let same_log = stored.source.topic_id.is_some() && stored.source.topic_id == live.topic_id;
        if policy.embedded && !same_log {
            // A position stored before topic ids were kept, on a broker that starts empty.
            return Ok(restart(
                GapReason::BrokerRestarted,
                format!(
                    "the stored position, offset {offset}, is past the end of the embedded \
                     broker's log (offset {}): it started again with empty topics",
                    bounds.high
                ),
            ));
        }
        // The same log, shorter: truncated under us (an unclean leader election, deleted
        // and re-produced records). Records written from its end on are new.
        let (resume_at, cause) = if same_log {
            (bounds.high, "the log was truncated")
        } else {
            (bounds.low, "the topic was recreated or the broker replaced")
        };
        let detail = format!(
            "the stored position, offset {offset}, is past the end of the log (offset {}): \
             {cause}, so what follows offset {offset} cannot be matched to what was read",
            bounds.high
        );
        if !skip {
            return Err(GapError {
                reason: GapReason::BeyondEnd,
                message: format!("{here}: {detail}.{}", skip_hint(resume_at)),
            });
        }
        return Ok(Resume {
            position: position(stored.next, stored.next - resume_at),
            gap: Some(gap(
                GapReason::BeyondEnd,
                stored.next,
                None,
                format!("{detail}; processing goes on at offset {resume_at}"),
            )),
        });
    }
    Ok(Resume {
        position: position(stored.next, stored.base),
        gap: None,
    })
}

/// Records of a partition arrived from broker offset `first` while `stored` was the next
/// expected: decides whether the offsets in between are lost input (the broker no longer has
/// them: a retention gap, of exactly the offsets that never arrived) or were never records
/// (compacted away, or transaction markers), which is no gap.
pub fn jump(
    policy: GapPolicy<'_>,
    partition: i32,
    stored: &Position,
    first: i64,
    bounds: LogBounds,
    now_ms: i64,
) -> Result<Option<NewGap>, GapError> {
    let expected = stored.broker_offset();
    if first <= expected || bounds.low <= expected {
        return Ok(None);
    }
    let lost = first - expected;
    let detail = format!(
        "offsets {expected}..{} ({lost} records) never arrived: the broker's log starts at {}          now, so they were deleted (retention) before this pipeline read them",
        first - 1,
        bounds.low
    );
    if policy.on_gap == OnGap::Fail {
        let hint = if policy.embedded { EMBEDDED_HINT } else { "" };
        return Err(GapError {
            reason: GapReason::Retention,
            message: format!(
                "input lost: topic `{}` partition {partition}: {detail}{hint}. The pipeline                  stops so that nothing is skipped silently; set `on_gap = \"skip\"` under                  [source] to go on and record the gap.",
                policy.topic
            ),
        });
    }
    Ok(Some(NewGap {
        topic: policy.topic.to_owned(),
        partition,
        from_offset: stored.next,
        to_offset: stored.next + lost,
        records: Some(lost),
        reason: GapReason::Retention.as_str().to_owned(),
        detail,
        at_ms: now_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(cluster: &str, topic: &str) -> SourceIdentity {
        SourceIdentity {
            cluster_id: Some(cluster.into()),
            topic_id: Some(topic.into()),
        }
    }

    fn at(next: i64, base: i64, source: SourceIdentity) -> Position {
        Position { next, base, source }
    }

    const FAIL: GapPolicy<'static> = GapPolicy {
        topic: "events",
        on_gap: OnGap::Fail,
        embedded: false,
    };
    const SKIP: GapPolicy<'static> = GapPolicy {
        on_gap: OnGap::Skip,
        ..FAIL
    };
    const EMBEDDED: GapPolicy<'static> = GapPolicy {
        embedded: true,
        ..FAIL
    };

    fn bounds(low: i64, high: i64) -> LogBounds {
        LogBounds { low, high }
    }

    #[test]
    fn a_position_inside_the_log_goes_on_and_learns_the_log() {
        let live = log("c1", "t1");
        for (next, b) in [(0, bounds(0, 0)), (5, bounds(0, 9)), (9, bounds(3, 9))] {
            let r = resume(
                FAIL,
                2,
                &at(next, 0, SourceIdentity::default()),
                &live,
                b,
                7,
            )
            .unwrap();
            assert_eq!(
                r,
                Resume {
                    position: at(next, 0, live.clone()),
                    gap: None
                }
            );
        }
        // With a base: stream position 1005 is broker offset 5.
        let r = resume(
            FAIL,
            2,
            &at(1005, 1000, live.clone()),
            &live,
            bounds(5, 9),
            7,
        )
        .unwrap();
        assert_eq!(r.gap, None);
        assert_eq!(r.position.broker_offset(), 5);
    }

    #[test]
    fn retention_fails_by_default_and_skips_the_exact_range_on_request() {
        let live = log("c1", "t1");
        let stored = at(1000, 0, live.clone());
        let e = resume(FAIL, 3, &stored, &live, bounds(80_136, 90_000), 7).unwrap_err();
        assert_eq!(e.reason, GapReason::Retention);
        for part in [
            "input lost: topic `events` partition 3",
            "offsets 1000..80135 (79136 records)",
            "log starts at 80136",
            "on_gap = \"skip\"",
            "go on from offset 80136",
        ] {
            assert!(e.message.contains(part), "{part}: {}", e.message);
        }
        let r = resume(SKIP, 3, &stored, &live, bounds(80_136, 90_000), 7).unwrap();
        assert_eq!(r.position, at(80_136, 0, live.clone()));
        let g = r.gap.unwrap();
        assert_eq!(
            (g.from_offset, g.to_offset, g.records),
            (1000, 80_136, Some(79_136))
        );
        assert_eq!(
            (g.reason.as_str(), g.partition, g.at_ms),
            ("retention", 3, 7)
        );
        // The embedded broker's limit is named.
        let e = resume(EMBEDDED, 3, &stored, &live, bounds(80_136, 90_000), 7).unwrap_err();
        assert!(e.message.contains("last 5 MiB"), "{}", e.message);
    }

    #[test]
    fn another_log_is_an_error_unless_skipped_and_the_stream_goes_on_past_it() {
        let old = log("c1", "t1");
        let new_topic = log("c1", "t2");
        let stored = at(5000, 0, old.clone());
        for live in [new_topic.clone(), log("c2", "t1")] {
            let e = resume(FAIL, 0, &stored, &live, bounds(0, 20), 7).unwrap_err();
            assert_eq!(e.reason, GapReason::SourceReplaced);
            assert!(
                e.message.contains("belongs to another log"),
                "{}",
                e.message
            );
        }
        let r = resume(SKIP, 0, &stored, &new_topic, bounds(0, 20), 7).unwrap();
        // Broker offset 0 of the new log is stream position 5000: no result collides with
        // one of the old log.
        assert_eq!(r.position, at(5000, 5000, new_topic.clone()));
        assert_eq!(r.position.broker_offset(), 0);
        let g = r.gap.unwrap();
        assert_eq!((g.from_offset, g.to_offset, g.records), (5000, 5000, None));
        assert_eq!(g.reason, "source_replaced");
        // Unknown parts never count as a change.
        let half = SourceIdentity {
            cluster_id: None,
            topic_id: Some("t1".into()),
        };
        assert_eq!(
            resume(FAIL, 0, &stored, &half, bounds(0, 6000), 7)
                .unwrap()
                .gap,
            None
        );
    }

    #[test]
    fn a_new_embedded_broker_is_a_recorded_restart_never_an_error() {
        let stored = at(7000, 0, log("mock1", "t1"));
        let live = log("mock2", "t9");
        let r = resume(EMBEDDED, 1, &stored, &live, bounds(0, 0), 7).unwrap();
        assert_eq!(r.position, at(7000, 7000, live.clone()));
        let g = r.gap.unwrap();
        assert_eq!(g.reason, "broker_restarted");
        assert!(
            g.detail.contains("started again with empty topics"),
            "{}",
            g.detail
        );
        // A second restart stacks the bases.
        let again = resume(
            EMBEDDED,
            1,
            &at(7300, 7000, live),
            &log("mock3", "t4"),
            bounds(0, 5),
            7,
        )
        .unwrap();
        assert_eq!(again.position, at(7300, 7300, log("mock3", "t4")));
        // Positions stored before topic ids were kept: past the end means a new broker.
        let legacy = at(7000, 0, SourceIdentity::default());
        let r = resume(EMBEDDED, 1, &legacy, &log("mock2", "t9"), bounds(0, 10), 7).unwrap();
        assert_eq!(r.position.next - r.position.base, 0);
        assert_eq!(r.gap.unwrap().reason, "broker_restarted");
    }

    #[test]
    fn a_jump_is_a_gap_only_when_the_broker_lost_the_records() {
        let live = log("c1", "t1");
        let stored = at(120, 20, live.clone());
        // Offsets 100..149 skipped, and the log starts at 130: 50 records lost.
        let e = jump(FAIL, 4, &stored, 150, bounds(130, 400), 7).unwrap_err();
        assert!(
            e.message.contains("offsets 100..149 (50 records)"),
            "{}",
            e.message
        );
        let g = jump(SKIP, 4, &stored, 150, bounds(130, 400), 7)
            .unwrap()
            .unwrap();
        assert_eq!(
            (g.from_offset, g.to_offset, g.records),
            (120, 170, Some(50))
        );
        // The log still has offset 100: compaction or transaction markers, no gap.
        assert_eq!(jump(FAIL, 4, &stored, 150, bounds(90, 400), 7), Ok(None));
        // No jump at all.
        assert_eq!(jump(FAIL, 4, &stored, 100, bounds(130, 400), 7), Ok(None));
    }

    #[test]
    fn past_the_end_fails_and_skips_to_the_end_of_a_truncated_log() {
        let live = log("c1", "t1");
        let e = resume(FAIL, 0, &at(900, 0, live.clone()), &live, bounds(0, 700), 7).unwrap_err();
        assert_eq!(e.reason, GapReason::BeyondEnd);
        assert!(
            e.message.contains("past the end of the log (offset 700)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("truncated"), "{}", e.message);
        // The same log, truncated: new records from 700 on continue at stream position 900.
        let r = resume(SKIP, 0, &at(900, 0, live.clone()), &live, bounds(0, 700), 7).unwrap();
        assert_eq!(r.position, at(900, 200, live.clone()));
        assert_eq!(r.gap.unwrap().reason, "beyond_end");
        // An unknown log: start at its beginning.
        let r = resume(
            SKIP,
            0,
            &at(900, 0, SourceIdentity::default()),
            &live,
            bounds(50, 700),
            7,
        )
        .unwrap();
        assert_eq!((r.position.next, r.position.broker_offset()), (900, 50));
    }
}
