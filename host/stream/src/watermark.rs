//! Event-time watermarks with bounded out-of-orderness, per partition, combined as the
//! minimum across active partitions. A partition that has been silent for the idle timeout
//! (in processing time, passed in by the caller) stops holding the watermark back.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Part {
    max_ts: Option<i64>,
    last_active_ms: u64,
}

/// Watermark tracking for one source.
#[derive(Debug, Clone)]
pub struct Watermarks {
    delay_ms: i64,
    idle_timeout_ms: u64,
    parts: BTreeMap<i32, Part>,
    current: i64,
}

impl Watermarks {
    /// Watermark = max event time − `delay_ms` − 1 per partition (Flink's bounded
    /// out-of-orderness); a partition is idle after `idle_timeout_ms` without events.
    pub fn new(delay_ms: i64, idle_timeout_ms: u64) -> Self {
        Watermarks {
            delay_ms,
            idle_timeout_ms,
            parts: BTreeMap::new(),
            current: i64::MIN,
        }
    }

    /// Registers an assigned partition (it holds the watermark until it is idle).
    pub fn assign(&mut self, partition: i32, now_ms: u64) {
        self.parts.entry(partition).or_insert(Part {
            max_ts: None,
            last_active_ms: now_ms,
        });
    }

    /// Forgets a revoked partition.
    pub fn revoke(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }

    /// Records an event.
    #[inline]
    pub fn observe(&mut self, partition: i32, ts: i64, now_ms: u64) {
        let p = self.parts.entry(partition).or_insert(Part {
            max_ts: None,
            last_active_ms: now_ms,
        });
        p.max_ts = Some(p.max_ts.map_or(ts, |m| m.max(ts)));
        p.last_active_ms = now_ms;
    }

    /// Recomputes the combined watermark at processing time `now_ms`. It never goes
    /// backwards; when every partition is idle it holds its value.
    pub fn advance(&mut self, now_ms: u64) -> i64 {
        let mut min: Option<i64> = None;
        for p in self.parts.values() {
            let idle = now_ms.saturating_sub(p.last_active_ms) >= self.idle_timeout_ms;
            if idle {
                continue;
            }
            let wm = match p.max_ts {
                Some(m) => m.saturating_sub(self.delay_ms).saturating_sub(1),
                None => i64::MIN, // active but empty: holds everything back until idle
            };
            min = Some(min.map_or(wm, |x| x.min(wm)));
        }
        if let Some(m) = min {
            self.current = self.current.max(m);
        }
        self.current
    }

    /// Every assigned partition with its own watermark, for checkpoints.
    pub fn partitions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.parts.keys().map(|&p| (p, self.partition_watermark(p)))
    }

    /// One partition's own watermark (`max ts − delay − 1`; `i64::MIN` before its first
    /// event). Used to judge its events' lateness, and stored in checkpoints.
    #[inline]
    pub fn partition_watermark(&self, partition: i32) -> i64 {
        match self.parts.get(&partition).and_then(|p| p.max_ts) {
            Some(m) => m.saturating_sub(self.delay_ms).saturating_sub(1),
            None => i64::MIN,
        }
    }

    /// Restores a partition from a checkpoint: its watermark as returned by
    /// [`Watermarks::partition_watermark`].
    pub fn restore(&mut self, partition: i32, watermark: i64, now_ms: u64) {
        let max_ts = (watermark != i64::MIN)
            .then(|| watermark.saturating_add(1).saturating_add(self.delay_ms));
        self.parts.insert(
            partition,
            Part {
                max_ts,
                last_active_ms: now_ms,
            },
        );
    }

    /// The last computed watermark.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// The highest event time seen on any partition.
    pub fn max_event_time(&self) -> Option<i64> {
        self.parts.values().filter_map(|p| p.max_ts).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_across_partitions_with_idle_timeout() {
        let mut w = Watermarks::new(0, 1_000);
        w.assign(0, 0);
        w.assign(1, 0);
        w.observe(0, 5_000, 10);
        assert_eq!(
            w.advance(10),
            i64::MIN,
            "partition 1 has no data yet and is not idle"
        );
        w.observe(1, 3_000, 20);
        assert_eq!(w.advance(20), 2_999);
        w.observe(0, 9_000, 30);
        assert_eq!(w.advance(30), 2_999, "the slow partition holds it back");
        // Partition 1 goes silent: after the idle timeout it no longer counts.
        w.observe(0, 9_500, 1_100);
        assert_eq!(w.advance(1_100), 9_499);
        // It never goes backwards when partition 1 comes back with old data.
        w.observe(1, 4_000, 1_200);
        assert_eq!(w.advance(1_200), 9_499);
    }

    #[test]
    fn bounded_out_of_orderness() {
        let mut w = Watermarks::new(2_000, u64::MAX);
        w.observe(0, 10_000, 0);
        assert_eq!(w.advance(0), 7_999);
        assert_eq!(w.max_event_time(), Some(10_000));
        assert_eq!(w.partition_watermark(0), 7_999);
        assert_eq!(w.partition_watermark(1), i64::MIN);
        let mut r = Watermarks::new(2_000, u64::MAX);
        r.restore(0, 7_999, 0);
        r.restore(1, i64::MIN, 0);
        assert_eq!(r.partition_watermark(0), 7_999);
        assert_eq!(r.partition_watermark(1), i64::MIN);
    }
}
