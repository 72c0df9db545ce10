//! Per-event views over the columnar batches that cross the host/guest boundary.

use crate::bindings::{EventBatch, FeatureBatch, WindowBatch};
use crate::{Error, Result};

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

/// A batch of events, checked once so per-event access cannot go out of bounds.
pub struct Events<'a> {
    batch: &'a EventBatch,
    keys: &'a str,
    has_payloads: bool,
}

impl<'a> Events<'a> {
    pub(crate) fn new(batch: &'a EventBatch) -> Result<Self> {
        let n = batch.len as usize;
        let dims = batch.input_dims as usize;
        if batch.timestamps.len() != n || batch.inputs.len() != n * dims {
            return Err(Error::input("malformed batch: column lengths disagree"));
        }
        check_offsets("key", &batch.key_offsets, n, batch.keys.len())?;
        let keys = std::str::from_utf8(&batch.keys)
            .map_err(|_| Error::input("malformed batch: keys are not UTF-8"))?;
        if batch
            .key_offsets
            .iter()
            .any(|&o| !keys.is_char_boundary(o as usize))
        {
            return Err(Error::input(
                "malformed batch: a key offset splits a character",
            ));
        }
        let has_payloads = !batch.payloads.is_empty();
        if has_payloads {
            check_offsets("payload", &batch.payload_offsets, n, batch.payloads.len())?;
        }
        Ok(Events {
            batch,
            keys,
            has_payloads,
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

    /// Numeric inputs per event.
    pub fn input_dims(&self) -> usize {
        self.batch.input_dims as usize
    }

    /// Event `i`.
    pub fn get(&self, i: usize) -> Option<Event<'a>> {
        if i >= self.len() {
            return None;
        }
        let b = self.batch;
        let (ks, ke) = (b.key_offsets[i] as usize, b.key_offsets[i + 1] as usize);
        // Offsets were checked to be monotone character boundaries of a UTF-8 buffer.
        let key = self.keys.get(ks..ke).unwrap_or("");
        let d = b.input_dims as usize;
        let payload = if self.has_payloads {
            let (ps, pe) = (
                b.payload_offsets[i] as usize,
                b.payload_offsets[i + 1] as usize,
            );
            std::str::from_utf8(&b.payloads[ps..pe]).ok()
        } else {
            None
        };
        Some(Event {
            key,
            ts: b.timestamps[i],
            inputs: &b.inputs[i * d..(i + 1) * d],
            payload,
        })
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = Event<'a>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    key: &'a str,
    ts: i64,
    inputs: &'a [f64],
    payload: Option<&'a str>,
}

impl<'a> Event<'a> {
    /// A stand-alone event (for unit tests of plugin logic).
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
    /// Event time, ms since the Unix epoch.
    pub fn ts(&self) -> i64 {
        self.ts
    }
    /// The numeric inputs the host lifted from the payload.
    pub fn inputs(&self) -> &'a [f64] {
        self.inputs
    }
    /// The raw JSON payload, when the pipeline sends payloads to this stage.
    pub fn payload(&self) -> Option<&'a str> {
        self.payload
    }
}

/// Rows of a feature batch.
pub struct Rows<'a> {
    values: &'a [f64],
    rows: usize,
    dims: usize,
}

impl<'a> Rows<'a> {
    pub(crate) fn new(f: &'a FeatureBatch) -> Result<Self> {
        let (rows, dims) = (f.rows as usize, f.dims as usize);
        if f.values.len() != rows * dims {
            return Err(Error::input(format!(
                "malformed batch: {} values for {rows} x {dims}",
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
    /// The rows in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [f64]> + '_ {
        (0..self.rows).map(move |i| &self.values[i * self.dims..(i + 1) * self.dims])
    }
}

/// Fired windows.
pub struct Panes<'a> {
    batch: &'a WindowBatch,
}

impl<'a> Panes<'a> {
    pub(crate) fn new(b: &'a WindowBatch) -> Result<Self> {
        let n = b.starts.len();
        if b.ends.len() != n || b.closing.len() != n {
            return Err(Error::input(
                "malformed window batch: column lengths disagree",
            ));
        }
        check_offsets("key", &b.key_offsets, n, b.keys.len())?;
        let dims = (b.dims as usize).max(1);
        if !b.values.len().is_multiple_of(dims) {
            return Err(Error::input(
                "malformed window batch: values are not whole rows",
            ));
        }
        check_offsets("row", &b.row_offsets, n, b.values.len() / dims)?;
        std::str::from_utf8(&b.keys)
            .map_err(|_| Error::input("malformed window batch: keys are not UTF-8"))?;
        Ok(Panes { batch: b })
    }
    /// Number of panes.
    pub fn len(&self) -> usize {
        self.batch.starts.len()
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.batch.starts.is_empty()
    }
    /// The panes in order.
    pub fn iter(&self) -> impl Iterator<Item = Pane<'a>> + '_ {
        let b = self.batch;
        let dims = b.dims as usize;
        (0..self.len()).map(move |i| {
            let (ks, ke) = (b.key_offsets[i] as usize, b.key_offsets[i + 1] as usize);
            let (rs, re) = (
                b.row_offsets[i] as usize * dims,
                b.row_offsets[i + 1] as usize * dims,
            );
            Pane {
                key: std::str::from_utf8(&b.keys[ks..ke]).unwrap_or(""),
                start: b.starts[i],
                end: b.ends[i],
                values: &b.values[rs..re],
                dims,
                closing: b.closing[i],
            }
        })
    }
}

/// One key in one window.
#[derive(Debug, Clone, Copy)]
pub struct Pane<'a> {
    key: &'a str,
    start: i64,
    end: i64,
    values: &'a [f64],
    dims: usize,
    closing: bool,
}

impl<'a> Pane<'a> {
    /// The key.
    pub fn key(&self) -> &'a str {
        self.key
    }
    /// Window start (inclusive), ms.
    pub fn start(&self) -> i64 {
        self.start
    }
    /// Window end (exclusive), ms.
    pub fn end(&self) -> i64 {
        self.end
    }
    /// True when the pane will never fire again: release its state.
    pub fn closing(&self) -> bool {
        self.closing
    }
    /// Number of new rows.
    pub fn row_count(&self) -> usize {
        self.values.len().checked_div(self.dims).unwrap_or(0)
    }
    /// The rows added since the pane last fired.
    pub fn rows(&self) -> impl Iterator<Item = &'a [f64]> + 'a {
        let dims = self.dims.max(1);
        self.values.chunks_exact(dims)
    }
}

/// Events an operator emits.
#[derive(Debug, Default)]
pub struct Output {
    batch: Option<EventBatch>,
}

impl Output {
    pub(crate) fn new() -> Self {
        Output { batch: None }
    }

    /// Emits an event. Every event emitted in one call must have the same number of values.
    pub fn emit(&mut self, key: &str, ts: i64, values: &[f64]) -> Result<()> {
        let b = self.batch.get_or_insert_with(|| EventBatch {
            len: 0,
            keys: Vec::new(),
            key_offsets: vec![0],
            timestamps: Vec::new(),
            input_dims: values.len() as u32,
            inputs: Vec::new(),
            payloads: Vec::new(),
            payload_offsets: vec![0],
        });
        if values.len() != b.input_dims as usize {
            return Err(Error::internal(format!(
                "emitted {} values after emitting events of {}",
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

    pub(crate) fn finish(self) -> EventBatch {
        self.batch.unwrap_or(EventBatch {
            len: 0,
            keys: Vec::new(),
            key_offsets: vec![0],
            timestamps: Vec::new(),
            input_dims: 0,
            inputs: Vec::new(),
            payloads: Vec::new(),
            payload_offsets: vec![0],
        })
    }
}
