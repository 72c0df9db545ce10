//! Keyed event-time windows: tumbling, sliding (hopping) and session windows, with allowed
//! lateness.
//!
//! Semantics (Flink's, and the shared workload's): a window `[start, end)` first fires when
//! the watermark `W ≥ end − 1`. An event is *too late* for a window when
//! `end − 1 + lateness ≤ W` on arrival; an event too late for all its windows goes to the
//! late side output. A late event that is still allowed updates its pane, and the pane fires
//! again. A pane is released (its last firing is marked `closing`) once
//! `W ≥ end − 1 + lateness`.

use crate::FastMap;
use crate::aggregate::Agg;
use crate::parse::same;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::Arc;

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
    /// How many values of `new_rows` the store holds already (in row chunks).
    stored: usize,
    /// The first row chunk holding the stored ones (meaningful while `stored > 0`).
    since: u64,
}

impl Pane {
    fn new(span: WindowSpan) -> Self {
        Pane {
            span,
            agg: Agg::default(),
            new_rows: Vec::new(),
            fired: false,
            dirty: false,
            stored: 0,
            since: 0,
        }
    }
}

/// One key's row chunks in the store: each cut writes the rows its panes gained since the
/// previous cut as a new chunk, so a checkpoint writes what changed, not every row a pane
/// holds again and again.
#[derive(Debug, Default, Clone)]
struct Chunks {
    /// The sequence number of the next chunk.
    next: u64,
    /// Chunks in the store, oldest first.
    stored: Vec<u64>,
}

/// A change to the stored window state of one key, from [`Windower::take_touched`]: its
/// header (`chunk: None`: the panes, their accumulators and flags) or one of its row chunks
/// (`chunk: Some(seq)`). `value: None` deletes it.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowEntry {
    /// `None` for the header, the chunk's sequence number otherwise.
    pub chunk: Option<u64>,
    /// The key.
    pub key: String,
    /// The encoded value, or `None` to delete it.
    pub value: Option<Vec<u8>>,
}

/// A pane that fired.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The key (shared with the windower's name for it: a firing allocates no key).
    pub key: Arc<str>,
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

impl Fired {
    /// Folds a later firing of the same pane (same key and start) into this one: its rows
    /// follow this one's, its span (a session may have grown) and aggregate (which covers
    /// everything the pane held then) replace this one's, and it may close the pane.
    pub fn absorb(&mut self, later: Fired) {
        self.new_rows.extend_from_slice(&later.new_rows);
        self.span = later.span;
        self.agg = later.agg;
        self.closing |= later.closing;
        self.updated |= later.updated;
    }
}

/// Merges the firings of one pane in `fired` into its first (in order), so that a pane is
/// handed to the operator once per call: an operator reads and writes a pane's state once
/// per call, and two firings of one pane in one call would read the same state twice.
pub fn merge_firings(fired: Vec<Fired>) -> Vec<Fired> {
    let mut seen: std::collections::HashSet<(&str, i64), foldhash::fast::RandomState> =
        std::collections::HashSet::with_capacity_and_hasher(fired.len(), Default::default());
    if fired.iter().all(|f| seen.insert((&*f.key, f.span.start))) {
        return fired;
    }
    drop(seen);
    let mut at: FastMap<(Arc<str>, i64), usize> =
        FastMap::with_capacity_and_hasher(fired.len(), Default::default());
    let mut out: Vec<Fired> = Vec::with_capacity(fired.len());
    for f in fired {
        let id = (f.key.clone(), f.span.start);
        match at.get(&id) {
            Some(&i) => out[i].absorb(f),
            None => {
                at.insert(id, out.len());
                out.push(f);
            }
        }
    }
    out
}

/// Panes by the time they are due (their window's end), for first firing or for release:
/// one bucket per end, which the panes of every key share. Entries are never removed one by
/// one: an entry lapses when its pane goes or changes span, and the windower checks each
/// entry against the live pane when its bucket comes due (a duplicate finds its pane
/// already fired or released).
#[derive(Debug, Default)]
struct Due {
    by_end: BTreeMap<i64, Vec<(u32, i64)>>,
}

impl Due {
    fn insert(&mut self, span: WindowSpan, k: u32) {
        self.by_end
            .entry(span.end)
            .or_default()
            .push((k, span.start));
    }

    /// Takes every entry whose end is due, as `(end, key, start)` in that order.
    fn take_due(&mut self, due: impl Fn(i64) -> bool) -> Vec<(i64, u32, i64)> {
        let mut out = Vec::new();
        while let Some(entry) = self.by_end.first_entry() {
            if !due(*entry.key()) {
                break;
            }
            let (end, mut panes) = entry.remove_entry();
            panes.sort_unstable();
            panes.dedup();
            out.extend(panes.into_iter().map(|(k, start)| (end, k, start)));
        }
        out
    }
}

/// One key's open panes, in order of start. A key has only a few open at once (its
/// current window and the ones still within their lateness), so a sorted vector beats a
/// tree, and a new pane usually goes at the end.
#[derive(Debug, Default, Clone)]
struct KeyPanes(Vec<Pane>);

impl KeyPanes {
    fn at(&self, start: i64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&start, |p| p.span.start)
    }

    fn get(&self, start: i64) -> Option<&Pane> {
        self.at(start).ok().map(|i| &self.0[i])
    }

    fn get_mut(&mut self, start: i64) -> Option<&mut Pane> {
        self.at(start).ok().map(|i| &mut self.0[i])
    }

    /// The pane at `start`, made with `make` (and placed in order) when there is none.
    fn get_or_insert_with(&mut self, start: i64, make: impl FnOnce() -> Pane) -> &mut Pane {
        let i = match self.at(start) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, make());
                i
            }
        };
        &mut self.0[i]
    }

    fn remove(&mut self, start: i64) -> Option<Pane> {
        self.at(start).ok().map(|i| self.0.remove(i))
    }

    /// Adds `pane`, replacing any pane with its start.
    fn insert(&mut self, pane: Pane) {
        match self.at(pane.span.start) {
            Ok(i) => self.0[i] = pane,
            Err(i) => self.0.insert(i, pane),
        }
    }

    fn values(&self) -> std::slice::Iter<'_, Pane> {
        self.0.iter()
    }

    fn values_mut(&mut self) -> std::slice::IterMut<'_, Pane> {
        self.0.iter_mut()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Keyed windows over one stream.
#[derive(Debug)]
pub struct Windower {
    kind: WindowKind,
    lateness: i64,
    dims: usize,
    keep_rows: bool,
    /// Key ids by key: each id's name is in `names`.
    keys: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    names: Vec<Arc<str>>,
    /// Each key's open panes, by key id (ids are never reused).
    panes: Vec<KeyPanes>,
    /// Unfired panes, by end.
    pending: Due,
    /// Fired panes with late updates.
    dirty: BTreeSet<(u32, i64)>,
    /// Every pane by end, for release.
    cleanup: Due,
    watermark: i64,
    late_events: u64,
    /// The lateness judge of the event being added (its partition's watermark).
    judge: i64,
    /// Keys whose panes changed since the last [`Windower::take_touched`], when tracked,
    /// each with whether it had panes at that cut (a key that had none then and has none
    /// now changed nothing a store holds).
    touched: Option<FastMap<u32, bool>>,
    /// Each key's row chunks in the store (only with rows kept and tracking on).
    chunks: FastMap<u32, Chunks>,
    /// A key keeps its rows inline while it has at most this many values.
    inline_values: usize,
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
            keys: hashbrown::HashTable::new(),
            hasher: Default::default(),
            names: Vec::new(),
            panes: Vec::new(),
            pending: Due::default(),
            dirty: BTreeSet::new(),
            cleanup: Due::default(),
            watermark: i64::MIN,
            late_events: 0,
            judge: i64::MIN,
            touched: None,
            chunks: FastMap::default(),
            inline_values: INLINE_VALUES,
        }
    }

    /// Starts tracking which keys' panes change, for checkpoints
    /// ([`Windower::take_touched`]).
    pub fn track_changes(&mut self) {
        self.touched.get_or_insert_with(FastMap::default);
    }

    /// Sets how many row values a key keeps inline before its rows move to chunks.
    #[cfg(test)]
    fn with_inline_values(mut self, n: usize) -> Self {
        self.inline_values = n;
        self
    }

    /// Marks a key changed; call it before changing its panes.
    #[inline]
    fn touch(&mut self, k: u32) {
        mark(&mut self.touched, &self.panes, k);
    }

    /// What changed in the stored window state since the last call: for each key whose
    /// panes changed, its header (or its deletion, when it has no open pane left), a new
    /// chunk with the rows its panes gained, and the deletion of chunks no pane needs any
    /// more. Empty unless tracking is on.
    pub fn take_touched(&mut self) -> Vec<WindowEntry> {
        let Some(touched) = self.touched.as_mut() else {
            return Vec::new();
        };
        let mut keys: Vec<(u32, bool)> = touched.drain().collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        for (k, had) in keys {
            let key = &*self.names[k as usize];
            let chunks = self.chunks.entry(k).or_default();
            let Some(panes) = self.panes.get_mut(k as usize).filter(|m| !m.is_empty()) else {
                // No open pane: the header and every chunk go (a key opened and released
                // between two cuts has neither).
                for seq in chunks.stored.drain(..) {
                    out.push(WindowEntry {
                        chunk: Some(seq),
                        key: key.to_owned(),
                        value: None,
                    });
                }
                self.chunks.remove(&k);
                if had {
                    out.push(WindowEntry {
                        chunk: None,
                        key: key.to_owned(),
                        value: None,
                    });
                }
                continue;
            };
            // A key with few rows keeps them inline in its header; past INLINE_VALUES it
            // moves to append-only chunks (until it closes), so a hot key's rows are written
            // once, not again at every cut.
            let inline = chunks.stored.is_empty()
                && panes.values().map(|p| p.new_rows.len()).sum::<usize>() <= self.inline_values;
            let seq = chunks.next;
            let mut rows = vec![ROWS_FORMAT];
            for p in panes.values_mut().filter(|_| !inline) {
                if p.new_rows.len() > p.stored {
                    if p.stored == 0 {
                        p.since = seq;
                    }
                    rows.extend_from_slice(&p.span.start.to_le_bytes());
                    put_values(&mut rows, &p.new_rows[p.stored..]);
                    p.stored = p.new_rows.len();
                }
            }
            if rows.len() > 1 {
                chunks.next += 1;
                chunks.stored.push(seq);
                out.push(WindowEntry {
                    chunk: Some(seq),
                    key: key.to_owned(),
                    value: Some(rows),
                });
            }
            // Chunks older than every stored row still pending hold nothing needed.
            let needed = panes
                .values()
                .filter(|p| p.stored > 0)
                .map(|p| p.since)
                .min()
                .unwrap_or(u64::MAX);
            let dead = chunks.stored.iter().take_while(|&&s| s < needed).count();
            for seq in chunks.stored.drain(..dead) {
                out.push(WindowEntry {
                    chunk: Some(seq),
                    key: key.to_owned(),
                    value: None,
                });
            }
            out.push(WindowEntry {
                chunk: None,
                key: key.to_owned(),
                value: Some(encode_header(
                    chunks.next,
                    self.dims,
                    panes.values(),
                    inline,
                )),
            });
        }
        out
    }

    /// Restores a key's panes from the entries [`Windower::take_touched`] left in a store:
    /// its header and its row chunks, `(sequence number, bytes)` in any order. Replaces any
    /// panes it has.
    pub fn restore_key(
        &mut self,
        key: &str,
        header: &[u8],
        chunks: &[(u64, &[u8])],
    ) -> Result<(), String> {
        let (next, mut panes) = decode_header(header, self.dims)?;
        let mut chunks = chunks.to_vec();
        chunks.sort_unstable_by_key(|(seq, _)| *seq);
        for &(seq, bytes) in &chunks {
            for (start, rows) in decode_rows(bytes, self.dims)? {
                // Rows of a pane released since (or of an earlier firing) are garbage the
                // chunk keeps until no pane needs it.
                if let Some(p) = panes.iter_mut().find(|p| p.span.start == start)
                    && p.stored > 0
                    && seq >= p.since
                {
                    p.new_rows.extend(rows);
                }
            }
        }
        for p in panes.iter().filter(|p| p.stored > 0) {
            if p.new_rows.len() != p.stored {
                return Err(format!(
                    "corrupt window state: the pane at {} has {} stored values of {}",
                    p.span.start,
                    p.new_rows.len(),
                    p.stored
                ));
            }
        }
        self.remove_key(key);
        let k = self.key_id(key);
        self.chunks.insert(
            k,
            Chunks {
                next,
                stored: chunks.iter().map(|(s, _)| *s).collect(),
            },
        );
        let mut map = KeyPanes::default();
        for p in panes {
            if !p.fired {
                self.pending.insert(p.span, k);
            }
            if p.dirty {
                self.dirty.insert((k, p.span.start));
            }
            self.cleanup.insert(p.span, k);
            map.insert(p);
        }
        self.panes[k as usize] = map;
        Ok(())
    }

    /// Forgets a key's panes (for example when its partition is revoked).
    pub fn remove_key(&mut self, key: &str) {
        let Some(k) = self.find_key(key) else {
            return;
        };
        // Its entries in `pending` and `cleanup` lapse with the panes.
        let map = std::mem::take(&mut self.panes[k as usize]);
        for p in map.values() {
            self.dirty.remove(&(k, p.span.start));
        }
        if let Some(t) = self.touched.as_mut() {
            t.remove(&k);
        }
        self.chunks.remove(&k);
    }

    /// Events routed to the late output so far.
    pub fn late_events(&self) -> u64 {
        self.late_events
    }

    /// Panes currently held.
    pub fn open_panes(&self) -> usize {
        self.panes.iter().map(KeyPanes::len).sum()
    }

    /// The watermark last passed to [`Windower::advance`].
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    fn find_key(&self, key: &str) -> Option<u32> {
        let names = &self.names;
        self.keys
            .find(self.hasher.hash_one(key), |&id| {
                same(names[id as usize].as_bytes(), key.as_bytes())
            })
            .copied()
    }

    /// The id of `key`, made on its first event (the table holds ids and compares names in
    /// line, with no `String` per key beside its name).
    fn key_id(&mut self, key: &str) -> u32 {
        if let Some(id) = self.find_key(key) {
            return id;
        }
        let h = self.hasher.hash_one(key);
        let id = self.names.len() as u32;
        self.names.push(Arc::from(key));
        self.panes.push(KeyPanes::default());
        let (names, hasher) = (&self.names, &self.hasher);
        self.keys
            .insert_unique(h, id, |&id| hasher.hash_one(&*names[id as usize]));
        id
    }

    fn too_late(&self, end: i64) -> bool {
        end - 1 + self.lateness <= self.watermark.max(self.judge)
    }

    /// Like [`Windower::add`], judging lateness against `watermark` (the watermark of the
    /// event's own partition) when it is ahead of the windower's. Judging by the source
    /// partition makes the late/accepted decision independent of how partitions interleave,
    /// so a replay after a crash decides exactly as the first run did.
    pub fn add_judged(
        &mut self,
        key: &str,
        ts: i64,
        value: f64,
        row: &[f64],
        watermark: i64,
    ) -> Lateness {
        self.judge = watermark;
        let r = self.add(key, ts, value, row);
        self.judge = i64::MIN;
        r
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
        self.touch(k);
        let keep = self.keep_rows;
        let pane = self.panes[k as usize].get_or_insert_with(span.start, || {
            self.pending.insert(span, k);
            self.cleanup.insert(span, k);
            Pane::new(span)
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
        self.touch(k);
        let panes = &mut self.panes[k as usize];
        // Sessions overlapping [ts, ts + gap) merge with the new event.
        let overlapping: Vec<i64> = panes
            .values()
            .filter(|p| p.span.start < span.end && p.span.end > span.start)
            .map(|p| p.span.start)
            .collect();
        // A merged pane is new to the store: its rows go into the next chunk whole.
        let mut merged = Pane::new(span);
        let mut any_fired = false;
        for s in overlapping {
            // Its entries in `pending` and `cleanup` lapse: the span they name is gone.
            if let Some(p) = panes.remove(s) {
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
            self.pending.insert(span, k);
        }
        self.cleanup.insert(span, k);
        panes.insert(merged);
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
        for (end, k, start) in self.pending.take_due(|end| end - 1 <= w) {
            if let Some(p) = self
                .panes
                .get_mut(k as usize)
                .and_then(|m| m.get_mut(start))
                && p.span.end == end
                && !p.fired
            {
                p.fired = true;
                p.dirty = false;
                out.push(fire(&self.names, k, p, true, false));
                mark(&mut self.touched, &self.panes, k);
            }
        }
        // Re-firings after late updates.
        for (k, start) in std::mem::take(&mut self.dirty) {
            if let Some(p) = self
                .panes
                .get_mut(k as usize)
                .and_then(|m| m.get_mut(start))
                && p.dirty
            {
                p.dirty = false;
                out.push(fire(&self.names, k, p, false, false));
                mark(&mut self.touched, &self.panes, k);
            }
        }
        // Releases.
        let lateness = self.lateness;
        for (end, k, start) in self.cleanup.take_due(|end| end - 1 + lateness <= w) {
            let live = self.panes.get(k as usize).and_then(|m| m.get(start));
            if live.is_none_or(|p| p.span.end != end) {
                continue;
            }
            mark(&mut self.touched, &self.panes, k);
            let Some(panes) = self.panes.get_mut(k as usize) else {
                continue;
            };
            if let Some(mut p) = panes.remove(start) {
                let mut f = fire(&self.names, k, &mut p, false, true);
                f.updated = false;
                out.push(f);
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

fn fire(names: &[Arc<str>], k: u32, p: &mut Pane, first: bool, closing: bool) -> Fired {
    p.stored = 0;
    Fired {
        key: names
            .get(k as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("")),
        span: p.span,
        agg: p.agg,
        new_rows: std::mem::take(&mut p.new_rows),
        first,
        closing,
        updated: true,
    }
}

/// Marks key `k` changed since the last cut, noting whether it had panes at that cut (its
/// panes are as they were then until its first change).
#[inline]
fn mark(touched: &mut Option<FastMap<u32, bool>>, panes: &[KeyPanes], k: u32) {
    if let Some(t) = touched.as_mut() {
        t.entry(k)
            .or_insert_with(|| panes.get(k as usize).is_some_and(|m| !m.is_empty()));
    }
}

/// The first format kept each pane's rows inline in the key's one entry; it is still read.
const PANES_FORMAT_INLINE: u8 = 1;
/// The second format: the third without the row width; it is still read.
const PANES_FORMAT_NO_WIDTH: u8 = 2;
/// A key's header: a format byte, the next chunk's sequence number, the row width (values
/// per row), then per pane its span, accumulator, flags, how many row values the key's
/// chunks hold for it and the chunk they start in, and its rows kept inline (a count and the
/// values; all little-endian). A key's rows are all inline or all in chunks.
const PANES_FORMAT: u8 = 3;
/// A key keeps its rows inline in its header while it has at most this many values (8 KiB).
const INLINE_VALUES: usize = 1024;
/// A row chunk: a format byte, then per pane its start, a value count and the values.
const ROWS_FORMAT: u8 = 1;

fn encode_header<'a>(
    next: u64,
    dims: usize,
    panes: impl Iterator<Item = &'a Pane>,
    inline: bool,
) -> Vec<u8> {
    let mut out = vec![PANES_FORMAT];
    out.extend_from_slice(&next.to_le_bytes());
    out.extend_from_slice(&(dims as u32).to_le_bytes());
    for p in panes {
        out.extend_from_slice(&p.span.start.to_le_bytes());
        out.extend_from_slice(&p.span.end.to_le_bytes());
        p.agg.encode(&mut out);
        out.push(u8::from(p.fired) | (u8::from(p.dirty) << 1));
        out.extend_from_slice(&(p.stored as u64).to_le_bytes());
        out.extend_from_slice(&p.since.to_le_bytes());
        put_values(&mut out, if inline { &p.new_rows } else { &[] });
    }
    out
}

/// Writes a value count and the values (little-endian), as [`Reader::values`] reads them.
fn put_values(out: &mut Vec<u8>, values: &[f64]) {
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for x in values {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn bad(what: &str) -> String {
    format!("corrupt window state: {what}")
}

/// Reads little-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A value count and the values, as [`put_values`] writes them.
    fn values(&mut self, dims: usize) -> Result<Vec<f64>, String> {
        let n = self.u32()? as usize;
        if dims > 0 && !n.is_multiple_of(dims) {
            return Err(bad("rows do not match the input dimensions"));
        }
        let raw = self.take(n.checked_mul(8).ok_or_else(|| bad("row count"))?)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                f64::from_le_bytes(w)
            })
            .collect())
    }
}

/// Decodes a key's header: the next chunk's number and its panes, without their rows
/// (except in the inline format, whose rows are in it: they count as not stored, so the
/// next cut writes them as a chunk).
fn decode_header(bytes: &[u8], dims: usize) -> Result<(u64, Vec<Pane>), String> {
    let (&format, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
    if ![PANES_FORMAT, PANES_FORMAT_NO_WIDTH, PANES_FORMAT_INLINE].contains(&format) {
        return Err(bad(&format!("unknown format {format}")));
    }
    let mut r = Reader(rest);
    let next = if format == PANES_FORMAT_INLINE {
        0
    } else {
        r.u64()?
    };
    if format == PANES_FORMAT {
        let width = r.u32()? as usize;
        if width != dims {
            return Err(format!(
                "the stored window rows have {width} values each, and this pipeline's have \
                 {dims}: `window.row_inputs` or `source.input_dims` changed while the window \
                 held state (restore with the spec that wrote it, or start the pipeline anew)"
            ));
        }
    }
    let mut panes = Vec::new();
    while !r.0.is_empty() {
        let start = r.i64()?;
        let end = r.i64()?;
        let (agg, rest) = Agg::decode(r.0).ok_or_else(|| bad("truncated accumulator"))?;
        r.0 = rest;
        let flags = r.take(1)?[0];
        if end <= start {
            return Err(bad("empty span"));
        }
        let mut p = Pane::new(WindowSpan { start, end });
        p.agg = agg;
        p.fired = flags & 1 != 0;
        p.dirty = flags & 2 != 0;
        if format != PANES_FORMAT_INLINE {
            p.stored = usize::try_from(r.u64()?).map_err(|_| bad("row count"))?;
            p.since = r.u64()?;
        }
        // Rows kept inline (a key with few rows, or the first format) count as not stored
        // in chunks: if the key grows, the next cut writes them into one.
        p.new_rows = r.values(dims)?;
        if p.stored > 0 && !p.new_rows.is_empty() {
            return Err(bad("a pane with both inline and chunked rows"));
        }
        panes.push(p);
    }
    Ok((next, panes))
}

/// Decodes a row chunk: `(pane start, values)` per pane.
fn decode_rows(bytes: &[u8], dims: usize) -> Result<Vec<(i64, Vec<f64>)>, String> {
    let (&format, rest) = bytes.split_first().ok_or_else(|| bad("empty chunk"))?;
    if format != ROWS_FORMAT {
        return Err(bad(&format!("unknown chunk format {format}")));
    }
    let mut r = Reader(rest);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let start = r.i64()?;
        out.push((start, r.values(dims)?));
    }
    Ok(out)
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
                    f.key.to_string(),
                    f.span.start,
                    f.span.end,
                    f.agg.count,
                    f.first,
                )
            })
            .collect()
    }

    /// Two firings of one pane reaching the operator in one call become one, with the rows
    /// of both: an operator that reads and writes each pane's state once per call would
    /// otherwise count only the second.
    #[test]
    fn firings_of_one_pane_merge_into_one() {
        let mut w = Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 2000, 1, true);
        w.add("a", 100, 1.0, &[1.0]);
        w.add("b", 200, 2.0, &[2.0]);
        let mut fired = w.advance(999);
        w.add("a", 300, 3.0, &[3.0]);
        fired.extend(w.advance(1000));
        fired.extend(w.advance(2999));
        assert_eq!(fired.len(), 5, "a, b; a again; a and b closing");
        let merged = merge_firings(fired);
        let a = merged.iter().find(|f| &*f.key == "a").unwrap();
        assert_eq!(merged.len(), 2);
        assert_eq!(a.new_rows, vec![1.0, 3.0]);
        assert_eq!(a.agg.count, 2);
        assert!(a.first && a.closing && a.updated);
        // Nothing to merge: the same firings, in order.
        let mut w = Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 2000, 1, true);
        w.add("a", 100, 1.0, &[1.0]);
        w.add("b", 200, 2.0, &[2.0]);
        let keys: Vec<String> = merge_firings(w.advance(999))
            .into_iter()
            .map(|f| f.key.to_string())
            .collect();
        assert_eq!(keys, ["a", "b"]);
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

    /// A windower restored from its checkpointed keys, fed the rest of the events, fires
    /// exactly what the uninterrupted one fires, for every window kind.
    #[test]
    fn restored_panes_continue_exactly() {
        let kinds = [
            WindowKind::Tumbling { size_ms: 100 },
            WindowKind::Sliding {
                size_ms: 100,
                slide_ms: 50,
            },
            WindowKind::Session { gap_ms: 40 },
        ];
        // A deterministic, out-of-order stream over three keys.
        let events: Vec<(String, i64, f64)> = (0..600i64)
            .map(|i| {
                let jitter = (i * 37 % 23) - 11;
                (
                    format!("k{}", i % 3),
                    i * 3 + jitter * 4,
                    (i % 17) as f64 - 5.0,
                )
            })
            .collect();
        for (kind, inline) in kinds
            .iter()
            .flat_map(|k| [(*k, 0), (*k, 8), (*k, INLINE_VALUES)])
        {
            let run = |w: &mut Windower, evs: &[(String, i64, f64)], out: &mut Vec<String>| {
                for (k, ts, x) in evs {
                    let r = w.add(k, *ts, *x, &[*x, 1.0]);
                    out.push(format!("{k}@{ts}:{r:?}"));
                    let wm = ts - 20;
                    for f in w.advance(wm) {
                        out.push(format!(
                            "{} [{},{}) n={} sum={} rows={:?} first={} closing={} updated={}",
                            f.key,
                            f.span.start,
                            f.span.end,
                            f.agg.count,
                            f.agg.sum,
                            f.new_rows,
                            f.first,
                            f.closing,
                            f.updated
                        ));
                    }
                }
            };
            // Cuts every 50 events go to a store, as the checkpointer writes them.
            let mut store: BTreeMap<(String, Option<u64>), Vec<u8>> = BTreeMap::new();
            let apply = |w: &mut Windower, store: &mut BTreeMap<_, _>| {
                for e in w.take_touched() {
                    match e.value {
                        Some(v) => store.insert((e.key, e.chunk), v),
                        None => store.remove(&(e.key, e.chunk)),
                    };
                }
            };
            let mut a = Windower::new(kind, 60, 2, true).with_inline_values(inline);
            a.track_changes();
            let mut full = Vec::new();
            for part in events[..300].chunks(50) {
                run(&mut a, part, &mut full);
                apply(&mut a, &mut store);
            }
            let saved = store.clone();
            let wm = a.watermark();
            let mut rest_a = Vec::new();
            for part in events[300..].chunks(50) {
                run(&mut a, part, &mut rest_a);
                apply(&mut a, &mut store);
            }

            let mut b = Windower::new(kind, 60, 2, true).with_inline_values(inline);
            let keys: BTreeSet<&String> = saved.keys().map(|(k, _)| k).collect();
            for k in keys {
                let header = &saved[&(k.clone(), None)];
                let chunks: Vec<(u64, &[u8])> = saved
                    .iter()
                    .filter_map(|((key, c), v)| (key == k).then_some((*c, v)))
                    .filter_map(|(c, v)| c.map(|c| (c, v.as_slice())))
                    .collect();
                b.restore_key(k, header, &chunks).expect("restores");
            }
            b.raise_watermark(wm);
            let mut rest_b = Vec::new();
            run(&mut b, &events[300..], &mut rest_b);
            assert!(!rest_a.is_empty());
            assert_eq!(rest_a, rest_b, "{kind:?}, {inline} values inline");
            assert_eq!(a.flush().len(), b.flush().len());
            // Everything released: the store is empty again.
            apply(&mut a, &mut store);
            assert!(store.is_empty(), "{kind:?}: {} entries left", store.len());
        }
        assert!(decode_header(&[9], 1).is_err());
        assert!(decode_header(&[PANES_FORMAT, 1, 2], 1).is_err());
        assert!(decode_rows(&[ROWS_FORMAT, 1], 1).is_err());
    }

    /// A checkpoint writes the rows a key gained since the last one, not every row it holds.
    #[test]
    fn a_cut_writes_only_the_new_rows() {
        let mut w = Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 2000, 1, true);
        w.track_changes();
        let rows_written = |e: &[WindowEntry]| -> usize {
            e.iter()
                .filter(|e| e.chunk.is_some())
                .filter_map(|e| e.value.as_ref())
                .map(|v| decode_rows(v, 1).map_or(0, |r| r.iter().map(|(_, x)| x.len()).sum()))
                .sum()
        };
        // Few rows stay inline in the header.
        w.add("k", 0, 0.0, &[0.0]);
        let first = w.take_touched();
        assert_eq!((first.len(), rows_written(&first)), (1, 0));
        for i in 1..INLINE_VALUES as i64 + 10 {
            w.add("k", i % 1000, i as f64, &[i as f64]);
        }
        // Past the inline limit every row moves to a chunk, once.
        assert_eq!(rows_written(&w.take_touched()), INLINE_VALUES + 10);
        for i in 10..13 {
            w.add("k", i, i as f64, &[i as f64]);
        }
        let second = w.take_touched();
        assert_eq!(rows_written(&second), 3, "only the new rows");
        assert_eq!(second.iter().filter(|e| e.value.is_none()).count(), 0);
        // The pane fires (and stays open for late events): its rows left for the operator,
        // so both chunks go and the header stays.
        let f = w.advance(999);
        assert_eq!(f[0].new_rows.len(), INLINE_VALUES + 13);
        let third = w.take_touched();
        let deleted: Vec<Option<u64>> = third
            .iter()
            .filter(|e| e.value.is_none())
            .map(|e| e.chunk)
            .collect();
        assert_eq!(deleted, [Some(0), Some(1)]);
    }

    /// A chunk outlives a pane whose rows it holds while another pane still needs it: the
    /// restore skips the released pane's rows.
    #[test]
    fn a_chunk_kept_for_one_pane_restores_without_the_released_ones() {
        let new = || {
            Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 500, 1, true)
                .with_inline_values(0)
        };
        let mut w = new();
        w.track_changes();
        let mut store: BTreeMap<Option<u64>, Vec<u8>> = BTreeMap::new();
        let mut cut = |w: &mut Windower| {
            for e in w.take_touched() {
                match e.value {
                    Some(v) => store.insert(e.chunk, v),
                    None => store.remove(&e.chunk),
                };
            }
        };
        w.add("k", 10, 1.0, &[1.0]);
        w.add("k", 2_010, 2.0, &[2.0]);
        cut(&mut w);
        // The pane at 0 fires and is released; the one at 2,000 still needs chunk 0.
        let f = w.advance(1_600);
        assert!(f.iter().any(|f| f.span.start == 0 && f.closing));
        cut(&mut w);
        assert!(store.contains_key(&Some(0)), "chunk 0 is still needed");
        let mut b = new();
        let chunks: Vec<(u64, &[u8])> = store
            .iter()
            .filter_map(|(c, v)| c.map(|c| (c, v.as_slice())))
            .collect();
        b.restore_key("k", &store[&None], &chunks)
            .expect("restores");
        let (fa, fb) = (w.flush(), b.flush());
        let rows = |f: &[Fired]| f.iter().map(|f| f.new_rows.clone()).collect::<Vec<_>>();
        assert_eq!(rows(&fa), rows(&fb));
        assert_eq!(
            rows(&fb),
            [vec![2.0], vec![]],
            "its first firing, then its release"
        );
    }

    /// State written by the first format (rows inline in the key's entry) still restores.
    #[test]
    fn the_inline_format_still_restores() {
        let mut agg = Agg::default();
        agg.add(2.0);
        agg.add(3.0);
        let mut v1 = vec![PANES_FORMAT_INLINE];
        v1.extend_from_slice(&0i64.to_le_bytes());
        v1.extend_from_slice(&1000i64.to_le_bytes());
        agg.encode(&mut v1);
        v1.push(0);
        v1.extend_from_slice(&2u32.to_le_bytes());
        for x in [2.0f64, 3.0] {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        let mut w =
            Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 0, 1, true).with_inline_values(0);
        w.track_changes();
        w.restore_key("k", &v1, &[]).expect("restores");
        // The next cut moves the inline rows into a chunk.
        let e = w.take_touched();
        assert!(e.is_empty(), "nothing changed yet");
        w.add("k", 5, 4.0, &[4.0]);
        let e = w.take_touched();
        let chunk = e.iter().find(|e| e.chunk.is_some()).expect("a chunk");
        let rows = decode_rows(chunk.value.as_deref().unwrap_or_default(), 1).expect("rows");
        assert_eq!(rows, [(0, vec![2.0, 3.0, 4.0])]);
        let f = w.advance(999);
        assert_eq!(
            (f[0].agg.count, f[0].new_rows.clone()),
            (3, vec![2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn rows_of_another_width_are_refused() {
        let kind = WindowKind::Tumbling { size_ms: 1000 };
        let mut w = Windower::new(kind, 0, 2, true);
        w.track_changes();
        w.add("k", 5, 1.0, &[1.0, 2.0]);
        let e = w.take_touched();
        let header = e[0].value.clone().expect("a header");
        let err = Windower::new(kind, 0, 1, true)
            .restore_key("k", &header, &[])
            .expect_err("one value per row now");
        assert!(
            err.contains("have 2 values each, and this pipeline's have 1"),
            "{err}"
        );
        let mut same = Windower::new(kind, 0, 2, true);
        same.restore_key("k", &header, &[]).expect("same width");
        assert_eq!(same.advance(999)[0].new_rows, [1.0, 2.0]);
        // The second format, which has no width, still restores (unchecked).
        let mut v2 = vec![PANES_FORMAT_NO_WIDTH];
        v2.extend_from_slice(&header[1..9]);
        v2.extend_from_slice(&header[13..]);
        let mut old = Windower::new(kind, 0, 2, true);
        old.restore_key("k", &v2, &[]).expect("format 2");
        assert_eq!(old.advance(999)[0].new_rows, [1.0, 2.0]);
    }

    #[test]
    fn keys_opened_and_released_between_cuts_change_nothing() {
        let mut w = Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 0, 0, false);
        w.track_changes();
        w.add("stays", 100, 1.0, &[]);
        let first = w.take_touched();
        assert_eq!(first.len(), 1);
        assert!(first[0].value.is_some() && first[0].chunk.is_none());
        // "brief" opens and is released before the next cut; "stays" is released too, but
        // the store has its panes from the first cut, so it must hear of the removal.
        w.add("brief", 200, 1.0, &[]);
        w.advance(5_000);
        assert_eq!(
            w.take_touched(),
            vec![WindowEntry {
                chunk: None,
                key: "stays".to_string(),
                value: None
            }]
        );
        assert!(w.take_touched().is_empty());
    }

    #[test]
    fn judged_by_the_partition_watermark() {
        let mut w = Windower::new(WindowKind::Tumbling { size_ms: 1000 }, 0, 0, false);
        // The windower's own watermark is behind, the partition's is past the window.
        assert_eq!(w.add_judged("a", 100, 1.0, &[], 5_000), Lateness::TooLate);
        assert_eq!(w.add_judged("a", 100, 1.0, &[], 500), Lateness::OnTime);
        assert_eq!(w.add("a", 100, 1.0, &[]), Lateness::OnTime);
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
