//! Per-event views over the columnar batches that cross the host/guest boundary.
//!
//! Each view checks its batch once, when it is built (column lengths, offsets, UTF-8), so
//! per-event access afterwards cannot go out of bounds: a malformed batch is an
//! [`Error::InvalidInput`], never a panic.

use crate::bindings::{EventBatch, FeatureBatch, WindowBatch};
use crate::{Error, Result};

/// Checks that `offsets` has `n + 1` non-decreasing entries from 0 to `total`.
fn check_offsets(what: &str, offsets: &[u32], n: usize, total: usize) -> Result<()> {
    if offsets.len() != n + 1
        || offsets.first() != Some(&0)
        || offsets.last().map(|&o| o as usize) != Some(total)
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::input(format!("malformed batch: bad {what} offsets")));
    }
    Ok(())
}

/// Checks that `bytes` is UTF-8 and that no offset splits a character.
fn check_text<'a>(what: &str, bytes: &'a [u8], offsets: &[u32]) -> Result<&'a str> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::input(format!("malformed batch: {what} are not UTF-8")))?;
    if offsets.iter().any(|&o| !text.is_char_boundary(o as usize)) {
        return Err(Error::input(format!(
            "malformed batch: a {what} offset splits a character"
        )));
    }
    Ok(text)
}

/// `a * b`, or an input error when it overflows.
fn size(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::input("malformed batch: size overflows"))
}

/// The text between `offsets[i]` and `offsets[i + 1]` of a checked buffer.
fn slice<'a>(text: &'a str, offsets: &[u32], i: usize) -> &'a str {
    match (offsets.get(i), offsets.get(i + 1)) {
        (Some(&s), Some(&e)) => text.get(s as usize..e as usize).unwrap_or(""),
        _ => "",
    }
}

/// A batch of events (the WIT `event-batch`), checked once so that per-event access cannot
/// go out of bounds.
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    batch: &'a EventBatch,
    keys: &'a str,
    payloads: Option<&'a str>,
}

impl<'a> Events<'a> {
    /// Checks a batch: column lengths, offsets, UTF-8 of keys and payloads.
    pub(crate) fn new(batch: &'a EventBatch) -> Result<Self> {
        let n = batch.len as usize;
        let dims = batch.input_dims as usize;
        if batch.timestamps.len() != n || batch.inputs.len() != size(n, dims)? {
            return Err(Error::input("malformed batch: column lengths disagree"));
        }
        check_offsets("key", &batch.key_offsets, n, batch.keys.len())?;
        let keys = check_text("key", &batch.keys, &batch.key_offsets)?;
        // The host sends payloads only to stages that ask for them; otherwise the buffer is
        // empty and the offsets are all 0.
        let payloads = if batch.payloads.is_empty() {
            None
        } else {
            check_offsets("payload", &batch.payload_offsets, n, batch.payloads.len())?;
            Some(check_text(
                "payload",
                &batch.payloads,
                &batch.payload_offsets,
            )?)
        };
        Ok(Events {
            batch,
            keys,
            payloads,
        })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.batch.len as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.batch.len == 0
    }

    /// Numeric inputs per event (the length of every [`Event::inputs`]).
    pub fn input_dims(&self) -> usize {
        self.batch.input_dims as usize
    }

    /// Event `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Event<'a>> {
        if i >= self.len() {
            return None;
        }
        let b = self.batch;
        let d = b.input_dims as usize;
        Some(Event {
            key: slice(self.keys, &b.key_offsets, i),
            ts: *b.timestamps.get(i)?,
            inputs: b.inputs.get(i * d..(i + 1) * d)?,
            payload: self.payloads.map(|p| slice(p, &b.payload_offsets, i)),
        })
    }

    /// The events in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Event<'a>> + '_ {
        let this = *self;
        (0..self.len()).map(move |i| this.get(i).unwrap_or(Event::new("", 0, &[], None)))
    }
}

/// One event of an [`Events`] batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    key: &'a str,
    ts: i64,
    inputs: &'a [f64],
    payload: Option<&'a str>,
}

impl<'a> Event<'a> {
    /// A stand-alone event, for unit tests of plugin logic.
    pub fn new(key: &'a str, ts: i64, inputs: &'a [f64], payload: Option<&'a str>) -> Self {
        Event {
            key,
            ts,
            inputs,
            payload,
        }
    }
    /// The record key.
    pub fn key(&self) -> &'a str {
        self.key
    }
    /// Event time, in milliseconds since the Unix epoch.
    pub fn ts(&self) -> i64 {
        self.ts
    }
    /// The numeric inputs the host lifted from the record field the pipeline spec names.
    pub fn inputs(&self) -> &'a [f64] {
        self.inputs
    }
    /// The raw JSON payload, or `None` when the host sent no payloads to this stage.
    pub fn payload(&self) -> Option<&'a str> {
        self.payload
    }
}

/// The rows of a feature batch (the WIT `feature-batch`), checked once.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    values: &'a [f64],
    rows: usize,
    dims: usize,
}

impl<'a> Rows<'a> {
    /// Checks that `values.len() == rows * dims`.
    pub(crate) fn new(f: &'a FeatureBatch) -> Result<Self> {
        let (rows, dims) = (f.rows as usize, f.dims as usize);
        if f.values.len() != size(rows, dims)? {
            return Err(Error::input(format!(
                "malformed batch: {} values for {rows} rows x {dims} features",
                f.values.len()
            )));
        }
        Ok(Rows {
            values: &f.values,
            rows,
            dims,
        })
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
    /// Values per row.
    pub fn dims(&self) -> usize {
        self.dims
    }
    /// Every value, row-major: row `i` is `values()[i * dims() .. (i + 1) * dims()]`.
    pub fn values(&self) -> &'a [f64] {
        self.values
    }
    /// Row `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&'a [f64]> {
        if i >= self.rows {
            return None;
        }
        self.values.get(i * self.dims..(i + 1) * self.dims)
    }
    /// The rows in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [f64]> + '_ {
        let this = *self;
        (0..self.rows).map(move |i| this.get(i).unwrap_or(&[]))
    }
}

/// Fired windows (the WIT `window-batch`): one [`Pane`] per key and window, checked once.
#[derive(Debug, Clone, Copy)]
pub struct Panes<'a> {
    batch: &'a WindowBatch,
    keys: &'a str,
}

impl<'a> Panes<'a> {
    /// Checks a batch: column lengths, key and row offsets, UTF-8 keys.
    pub(crate) fn new(b: &'a WindowBatch) -> Result<Self> {
        let n = b.starts.len();
        if b.ends.len() != n || b.closing.len() != n {
            return Err(Error::input(
                "malformed window batch: column lengths disagree",
            ));
        }
        check_offsets("key", &b.key_offsets, n, b.keys.len())?;
        let keys = check_text("key", &b.keys, &b.key_offsets)?;
        let dims = b.dims as usize;
        if dims == 0 {
            // Rows of width 0: any row count, no values.
            if !b.values.is_empty() {
                return Err(Error::input("malformed window batch: values with dims 0"));
            }
            let total = b.row_offsets.last().map_or(0, |&o| o as usize);
            check_offsets("row", &b.row_offsets, n, total)?;
        } else {
            if !b.values.len().is_multiple_of(dims) {
                return Err(Error::input(
                    "malformed window batch: values are not whole rows",
                ));
            }
            check_offsets("row", &b.row_offsets, n, b.values.len() / dims)?;
        }
        Ok(Panes { batch: b, keys })
    }
    /// Number of panes.
    pub fn len(&self) -> usize {
        self.batch.starts.len()
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.batch.starts.is_empty()
    }
    /// Values per row.
    pub fn dims(&self) -> usize {
        self.batch.dims as usize
    }
    /// Pane `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Pane<'a>> {
        let b = self.batch;
        let dims = b.dims as usize;
        let (rs, re) = (
            *b.row_offsets.get(i)? as usize,
            *b.row_offsets.get(i + 1)? as usize,
        );
        Some(Pane {
            key: slice(self.keys, &b.key_offsets, i),
            start: *b.starts.get(i)?,
            end: *b.ends.get(i)?,
            values: b.values.get(rs * dims..re * dims)?,
            rows: re - rs,
            dims,
            closing: *b.closing.get(i)?,
        })
    }
    /// The panes in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Pane<'a>> + '_ {
        let this = *self;
        (0..self.len()).map(move |i| {
            this.get(i).unwrap_or(Pane {
                key: "",
                start: 0,
                end: 0,
                values: &[],
                rows: 0,
                dims: 0,
                closing: false,
            })
        })
    }
}

/// One key in one event-time window, with the rows assigned to it since it last fired.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pane<'a> {
    key: &'a str,
    start: i64,
    end: i64,
    values: &'a [f64],
    rows: usize,
    dims: usize,
    closing: bool,
}

impl<'a> Pane<'a> {
    /// The key.
    pub fn key(&self) -> &'a str {
        self.key
    }
    /// Window start (inclusive), ms since the Unix epoch.
    pub fn start(&self) -> i64 {
        self.start
    }
    /// Window end (exclusive), ms since the Unix epoch.
    pub fn end(&self) -> i64 {
        self.end
    }
    /// True when the pane will never fire again (its allowed lateness has passed): release
    /// any state kept for it.
    pub fn closing(&self) -> bool {
        self.closing
    }
    /// Number of rows added since the pane last fired (0 for a closing pane with nothing
    /// new).
    pub fn row_count(&self) -> usize {
        self.rows
    }
    /// The rows added since the pane last fired, each `dims` values long.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &'a [f64]> + 'a {
        let (values, dims) = (self.values, self.dims);
        (0..self.rows).map(move |r| values.get(r * dims..(r + 1) * dims).unwrap_or(&[]))
    }
}

/// Events an operator emits; becomes the `event-batch` its call returns.
#[derive(Debug, Default)]
pub struct Output {
    batch: Option<EventBatch>,
}

fn empty_batch(dims: u32) -> EventBatch {
    EventBatch {
        len: 0,
        keys: Vec::new(),
        key_offsets: vec![0],
        timestamps: Vec::new(),
        input_dims: dims,
        inputs: Vec::new(),
        payloads: Vec::new(),
        payload_offsets: vec![0],
    }
}

impl Output {
    /// An empty output (the glue makes one per call; useful in unit tests).
    pub fn new() -> Self {
        Output { batch: None }
    }

    /// Emits an event with key `key`, event time `ts` and numeric `values` (they become the
    /// output batch's `inputs`). Every event emitted in one call must have the same number
    /// of values: a different count is an error and emits nothing.
    pub fn emit(&mut self, key: &str, ts: i64, values: &[f64]) -> Result<()> {
        let b = self
            .batch
            .get_or_insert_with(|| empty_batch(values.len() as u32));
        if values.len() != b.input_dims as usize {
            return Err(Error::internal(format!(
                "emitted an event with {} values after events with {}: every event one call \
                 emits must have the same number of values",
                values.len(),
                b.input_dims
            )));
        }
        b.keys.extend_from_slice(key.as_bytes());
        b.key_offsets.push(b.keys.len() as u32);
        b.timestamps.push(ts);
        b.inputs.extend_from_slice(values);
        b.payload_offsets.push(0);
        b.len += 1;
        Ok(())
    }

    /// Events emitted so far.
    pub fn len(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.len as usize)
    }

    /// True when nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Event `i` emitted so far (without payload), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Event<'_>> {
        let b = self.batch.as_ref()?;
        if i >= b.len as usize {
            return None;
        }
        let d = b.input_dims as usize;
        let (ks, ke) = (
            *b.key_offsets.get(i)? as usize,
            *b.key_offsets.get(i + 1)? as usize,
        );
        Some(Event {
            // Keys were appended from `&str`s, so the offsets fall on character boundaries.
            key: std::str::from_utf8(b.keys.get(ks..ke)?).unwrap_or(""),
            ts: *b.timestamps.get(i)?,
            inputs: b.inputs.get(i * d..(i + 1) * d)?,
            payload: None,
        })
    }

    /// The columnar batch the call returns.
    pub(crate) fn finish(self) -> EventBatch {
        self.batch.unwrap_or_else(|| empty_batch(0))
    }
}
