//! Keyed event-time windows: tumbling, sliding (hopping) and session windows, with allowed
//! lateness.
//!
//! Semantics (Flink's, and the shared workload's): a window `[start, end)` first fires when
//! the watermark `W ≥ end − 1`. An event is *too late* for a window when
//! `end − 1 + lateness ≤ W` on arrival; an event too late for all its windows goes to the
//! late side output. A late event that is still allowed updates its pane, and the pane fires
//! again. A pane is released (its last firing is marked `closing`) once
//! `W ≥ end − 1 + lateness`.

use crate::aggregate::Agg;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Kind and size of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size_ms`.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
    /// Per-key sessions that close after `gap_ms` without events.
    Session {
        /// Inactivity gap.
        gap_ms: i64,
    },
}

impl WindowKind {
    /// Checks sizes.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            WindowKind::Tumbling { size_ms } if size_ms <= 0 => {
                Err("size_ms must be positive".into())
            }
            WindowKind::Sliding { size_ms, slide_ms } if size_ms <= 0 || slide_ms <= 0 => {
                Err("size_ms and slide_ms must be positive".into())
            }
            WindowKind::Sliding { size_ms, slide_ms } if size_ms % slide_ms != 0 => {
                Err("size_ms must be a multiple of slide_ms".into())
            }
            WindowKind::Session { gap_ms } if gap_ms <= 0 => Err("gap_ms must be positive".into()),
            _ => Ok(()),
        }
    }
}

/// A window `[start, end)` in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowSpan {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lateness {
    /// Added to windows that have not fired yet.
    OnTime,
    /// Added to at least one window that had already fired: it will fire again.
    LateAccepted,
    /// Too late for every window: route it to the late output.
    TooLate,
}

/// One key's state in one window.
#[derive(Debug, Clone)]
pub struct Pane {
    /// The window.
    pub span: WindowSpan,
    /// Built-in aggregates of the configured value.
    pub agg: Agg,
    /// Rows added since the pane last fired (kept only when the windower keeps rows).
    pub new_rows: Vec<f64>,
    fired: bool,
    dirty: bool,
}

/// A pane that fired.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The key.
    pub key: String,
    /// The window.
    pub span: WindowSpan,
    /// Aggregates over everything the pane holds.
    pub agg: Agg,
    /// Rows added since the previous firing (empty unless rows are kept).
    pub new_rows: Vec<f64>,
    /// True when this is the pane's first firing.
    pub first: bool,
    /// True when the pane is released: it will never fire again.
    pub closing: bool,
    /// True when the pane has changes to emit (false for a closing pane with nothing new).
    pub updated: bool,
}

/// Keyed windows over one stream.
#[derive(Debug)]
pub struct Windower {
    kind: WindowKind,
    lateness: i64,
    dims: usize,
    keep_rows: bool,
    keys: HashMap<String, u32>,
    names: Vec<String>,
    panes: HashMap<u32, BTreeMap<i64, Pane>>,
    /// Unfired panes by (end, key, start).
    pending: BTreeSet<(i64, u32, i64)>,
    /// Fired panes with late updates.
    dirty: BTreeSet<(u32, i64)>,
    /// Every pane by (end, key, start), for release.
    cleanup: BTreeSet<(i64, u32, i64)>,
    watermark: i64,
    late_events: u64,
}

impl Windower {
    /// Windows of `kind` with `lateness_ms` of allowed lateness. With `keep_rows`, each
    /// pane also buffers the rows (of `dims` values) added since its last firing, for Wasm
    /// `on-window` operators.
    pub fn new(kind: WindowKind, lateness_ms: i64, dims: usize, keep_rows: bool) -> Self {
        Windower {
            kind,
            lateness: lateness_ms.max(0),
            dims,
            keep_rows,
            keys: HashMap::new(),
            names: Vec::new(),
            panes: HashMap::new(),
            pending: BTreeSet::new(),
            dirty: BTreeSet::new(),
            cleanup: BTreeSet::new(),
            watermark: i64::MIN,
            late_events: 0,
        }
    }

    /// Events routed to the late output so far.
    pub fn late_events(&self) -> u64 {
        self.late_events
    }

    /// Panes currently held.
    pub fn open_panes(&self) -> usize {
        self.cleanup.len()
    }

    /// The watermark last passed to [`Windower::advance`].
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    fn key_id(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.keys.get(key) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(key.to_string());
        self.keys.insert(key.to_string(), id);
        id
    }

    fn too_late(&self, end: i64) -> bool {
        end - 1 + self.lateness <= self.watermark
    }

    /// Adds an event with its aggregated `value` and its `row` (of `dims` values, used only
    /// when rows are kept).
    pub fn add(&mut self, key: &str, ts: i64, value: f64, row: &[f64]) -> Lateness {
        match self.kind {
            WindowKind::Tumbling { size_ms } => {
                let start = ts - ts.rem_euclid(size_ms);
                self.add_to(
                    key,
                    WindowSpan {
                        start,
                        end: start + size_ms,
                    },
                    value,
                    row,
                )
            }
            WindowKind::Sliding { size_ms, slide_ms } => {
                let last = ts - ts.rem_euclid(slide_ms);
                let mut result = Lateness::TooLate;
                let mut start = last - size_ms + slide_ms;
                while start <= last {
                    let r = self.add_to(
                        key,
                        WindowSpan {
                            start,
                            end: start + size_ms,
                        },
                        value,
                        row,
                    );
                    result = combine(result, r);
                    start += slide_ms;
                }
                result
            }
            WindowKind::Session { gap_ms } => self.add_session(key, ts, gap_ms, value, row),
        }
    }

    fn add_to(&mut self, key: &str, span: WindowSpan, value: f64, row: &[f64]) -> Lateness {
        if self.too_late(span.end) {
            return Lateness::TooLate;
        }
        let k = self.key_id(key);
        let keep = self.keep_rows;
        let panes = self.panes.entry(k).or_default();
        let pane = panes.entry(span.start).or_insert_with(|| {
            self.pending.insert((span.end, k, span.start));
            self.cleanup.insert((span.end, k, span.start));
            Pane {
                span,
                agg: Agg::default(),
                new_rows: Vec::new(),
                fired: false,
                dirty: false,
            }
        });
        pane.agg.add(value);
        if keep {
            pane.new_rows.extend_from_slice(row);
        }
        if pane.fired {
            pane.dirty = true;
            self.dirty.insert((k, span.start));
            Lateness::LateAccepted
        } else {
            Lateness::OnTime
        }
    }

    fn add_session(&mut self, key: &str, ts: i64, gap: i64, value: f64, row: &[f64]) -> Lateness {
        let mut span = WindowSpan {
            start: ts,
            end: ts + gap,
        };
        if self.too_late(span.end) {
            return Lateness::TooLate;
        }
        let k = self.key_id(key);
        let panes = self.panes.entry(k).or_default();
        // Sessions overlapping [ts, ts + gap) merge with the new event.
        let overlapping: Vec<i64> = panes
            .range(..span.end)
            .filter(|(_, p)| p.span.end > span.start)
            .map(|(&s, _)| s)
            .collect();
        let mut merged = Pane {
            span,
            agg: Agg::default(),
            new_rows: Vec::new(),
            fired: false,
            dirty: false,
        };
        let mut any_fired = false;
        for s in overlapping {
            if let Some(p) = panes.remove(&s) {
                self.pending.remove(&(p.span.end, k, p.span.start));
                self.cleanup.remove(&(p.span.end, k, p.span.start));
                self.dirty.remove(&(k, p.span.start));
                span.start = span.start.min(p.span.start);
                span.end = span.end.max(p.span.end);
                merged.agg.merge(&p.agg);
                merged.new_rows.extend_from_slice(&p.new_rows);
                any_fired |= p.fired;
            }
        }
        merged.span = span;
        merged.agg.add(value);
        if self.keep_rows {
            merged.new_rows.extend_from_slice(row);
        }
        // A merged session whose end moved is a new window: it fires (again) when the
        // watermark passes its new end; it is not "late" unless a fired part was extended
        // and the watermark is already past the new end.
        merged.fired = any_fired && span.end - 1 <= self.watermark;
        merged.dirty = merged.fired;
        let result = if merged.fired {
            Lateness::LateAccepted
        } else {
            Lateness::OnTime
        };
        if merged.fired {
            self.dirty.insert((k, span.start));
        } else {
            self.pending.insert((span.end, k, span.start));
        }
        self.cleanup.insert((span.end, k, span.start));
        panes.insert(span.start, merged);
        result
    }

    /// Raises the watermark used to judge lateness, without firing anything (panes fire on
    /// the next [`Windower::advance`]).
    pub fn raise_watermark(&mut self, w: i64) {
        self.watermark = self.watermark.max(w);
    }

    /// Records an event that was too late for every window (counts it).
    pub fn count_late(&mut self) {
        self.late_events += 1;
    }

    /// Advances to watermark `w` and returns the panes that fire: first firings of windows
    /// with `end − 1 ≤ w`, re-firings of panes with late updates, and releases of panes whose
    /// lateness has passed.
    pub fn advance(&mut self, w: i64) -> Vec<Fired> {
        self.watermark = self.watermark.max(w);
        let w = self.watermark;
        let mut out = Vec::new();
        // First firings.
        while let Some(&(end, k, start)) = self.pending.first() {
            if end - 1 > w {
                break;
            }
            self.pending.pop_first();
            if let Some(p) = self.panes.get_mut(&k).and_then(|m| m.get_mut(&start)) {
                p.fired = true;
                p.dirty = false;
                out.push(fire(&self.names, k, p, true, false));
            }
        }
        // Re-firings after late updates.
        for (k, start) in std::mem::take(&mut self.dirty) {
            if let Some(p) = self.panes.get_mut(&k).and_then(|m| m.get_mut(&start))
                && p.dirty
            {
                p.dirty = false;
                out.push(fire(&self.names, k, p, false, false));
            }
        }
        // Releases.
        while let Some(&(end, k, start)) = self.cleanup.first() {
            if end - 1 + self.lateness > w {
                break;
            }
            self.cleanup.pop_first();
            let Some(panes) = self.panes.get_mut(&k) else {
                continue;
            };
            if let Some(mut p) = panes.remove(&start) {
                let mut f = fire(&self.names, k, &mut p, false, true);
                f.updated = false;
                out.push(f);
            }
            if panes.is_empty() {
                self.panes.remove(&k);
            }
        }
        out
    }

    /// Fires and releases everything (end of a bounded input).
    pub fn flush(&mut self) -> Vec<Fired> {
        self.advance(i64::MAX - self.lateness - 1)
    }

    /// Number of values per kept row.
    pub fn dims(&self) -> usize {
        self.dims
    }
}

fn combine(a: Lateness, b: Lateness) -> Lateness {
    use Lateness::*;
    match (a, b) {
        (LateAccepted, _) | (_, LateAccepted) => LateAccepted,
        (OnTime, _) | (_, OnTime) => OnTime,
        _ => TooLate,
    }
}

fn fire(names: &[String], k: u32, p: &mut Pane, first: bool, closing: bool) -> Fired {
    Fired {
        key: names.get(k as usize).cloned().unwrap_or_default(),
        span: p.span,
        agg: p.agg,
        new_rows: std::mem::take(&mut p.new_rows),
        first,
        closing,
        updated: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AggKind;

    fn fired_summary(f: &[Fired]) -> Vec<(String, i64, i64, u64, bool)> {
        f.iter()
            .filter(|f| f.updated)
            .map(|f| {
                (
                    f.key.clone(),
                    f.span.start,
                    f.span.end,
                    f.agg.count,
                    f.first,
                )
            })
            .collect()
    }

    #[test]
    fn tumbling_fires_refires_late_and_drops_too_late() {
        let mut w = Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 2000, 0, false);
        assert_eq!(w.add("a", 100, 1.0, &[]), Lateness::OnTime);
        assert_eq!(w.add("a", 999, 3.0, &[]), Lateness::OnTime);
        assert_eq!(w.add("b", 1500, 5.0, &[]), Lateness::OnTime);
        assert!(w.advance(998).is_empty(), "W = 998 < end - 1 = 999");
        let f = w.advance(999);
        assert_eq!(fired_summary(&f), vec![("a".into(), 0, 1000, 2, true)]);
        assert_eq!(f[0].agg.get(AggKind::Mean), 2.0);
        // Late but allowed: updates and re-fires.
        assert_eq!(w.add("a", 500, 8.0, &[]), Lateness::LateAccepted);
        let f = w.advance(1200);
        assert_eq!(fired_summary(&f), vec![("a".into(), 0, 1000, 3, false)]);
        assert_eq!(f[0].agg.get(AggKind::Max), 8.0);
        // W = 2999: window [0, 1000) is released (999 + 2000 <= 2999), so 500 is too late.
        let f = w.advance(2999);
        assert!(f.iter().any(|f| f.closing && f.span.start == 0));
        assert_eq!(w.add("a", 500, 1.0, &[]), Lateness::TooLate);
        assert_eq!(w.open_panes(), 1);
    }

    #[test]
    fn sliding_windows_by_hand() {
        // size 10, slide 5: ts 7 belongs to [0,10) and [5,15); ts 12 to [5,15) and [10,20).
        let mut w = Windower::new(
            WindowKind::Sliding {
                size_ms: 10,
                slide_ms: 5,
            },
            0,
            0,
            false,
        );
        w.add("k", 7, 1.0, &[]);
        w.add("k", 12, 2.0, &[]);
        w.add("k", 3, 4.0, &[]); // [-5,5) and [0,10)
        let f = w.flush();
        let mut got: Vec<_> = f
            .iter()
            .filter(|f| f.first)
            .map(|f| (f.span.start, f.span.end, f.agg.sum))
            .collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            vec![(-5, 5, 4.0), (0, 10, 5.0), (5, 15, 3.0), (10, 20, 2.0)]
        );
    }

    #[test]
    fn session_windows_by_hand() {
        // gap 10: events at 0, 5, 30, 12 (late, bridges nothing: 12+10=22 < 30), 25 (merges 30)
        let mut w = Windower::new(WindowKind::Session { gap_ms: 10 }, 100, 1, true);
        w.add("u", 0, 1.0, &[1.0]);
        w.add("u", 5, 2.0, &[2.0]);
        w.add("u", 30, 3.0, &[3.0]);
        w.add("u", 12, 4.0, &[4.0]); // [12,22) overlaps [0,15) -> [0,22)
        w.add("u", 25, 5.0, &[5.0]); // [25,35) overlaps [30,40) -> [25,40)
        w.add("v", 100, 9.0, &[9.0]);
        let f = w.advance(21);
        assert_eq!(fired_summary(&f), vec![("u".into(), 0, 22, 3, true)]);
        assert_eq!(f[0].new_rows, vec![1.0, 2.0, 4.0]);
        let f = w.advance(39);
        assert_eq!(fired_summary(&f), vec![("u".into(), 25, 40, 2, true)]);
        assert_eq!(f[0].agg.sum, 8.0);
        // A late event that bridges two fired sessions merges them and fires again.
        assert_eq!(w.add("u", 18, 10.0, &[10.0]), Lateness::LateAccepted);
        let f = w.advance(40);
        assert_eq!(fired_summary(&f), vec![("u".into(), 0, 40, 6, false)]);
        assert_eq!(f[0].agg.sum, 25.0);
        // Rows already delivered are not delivered again: only the bridging event is new.
        assert_eq!(f[0].new_rows, vec![10.0]);
    }
}
