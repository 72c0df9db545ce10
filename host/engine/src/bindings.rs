//! Host bindings for the three plugin worlds, generated from `wit/` by
//! `wasmtime::component::bindgen!`. The shared interfaces (`types`, `log`, `state`) are
//! generated once and reused by the other worlds, so a batch type is one Rust type
//! everywhere.
#![allow(missing_docs)]

/// The `operator-plugin` world; also the home of the shared interfaces.
pub mod operator {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "operator-plugin",
        imports: { default: trappable },
    });
}

/// The `extractor-plugin` world.
pub mod extractor {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "extractor-plugin",
        imports: { default: trappable },
        with: {
            "weir:operator/types": crate::bindings::operator::weir::operator::types,
            "weir:operator/log": crate::bindings::operator::weir::operator::log,
            "weir:operator/state": crate::bindings::operator::weir::operator::state,
        },
    });
}

/// The `model-plugin` world.
pub mod model {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "model-plugin",
        imports: { default: trappable },
        with: {
            "weir:operator/types": crate::bindings::operator::weir::operator::types,
            "weir:operator/log": crate::bindings::operator::weir::operator::log,
        },
    });
}

pub use operator::weir::operator::log::Level as LogLevel;
pub use operator::weir::operator::types::{EventBatch, FeatureBatch, PluginError, WindowBatch};

impl EventBatch {
    /// An empty batch whose events carry `input_dims` numeric inputs each.
    pub fn with_dims(input_dims: u32) -> Self {
        EventBatch {
            len: 0,
            keys: Vec::new(),
            key_offsets: vec![0],
            timestamps: Vec::new(),
            input_dims,
            inputs: Vec::new(),
            payloads: Vec::new(),
            payload_offsets: vec![0],
        }
    }

    /// Appends one event (without a payload). `inputs` must have `input_dims` values.
    pub fn push(&mut self, key: &str, ts: i64, inputs: &[f64]) {
        debug_assert_eq!(inputs.len(), self.input_dims as usize);
        self.keys.extend_from_slice(key.as_bytes());
        self.key_offsets.push(self.keys.len() as u32);
        self.timestamps.push(ts);
        self.inputs.extend_from_slice(inputs);
        self.payload_offsets.push(self.payloads.len() as u32);
        self.len += 1;
    }

    /// Appends one event with its raw JSON payload.
    pub fn push_with_payload(&mut self, key: &str, ts: i64, inputs: &[f64], payload: &str) {
        self.payloads.extend_from_slice(payload.as_bytes());
        self.push(key, ts, inputs);
    }

    /// Removes every event, keeping the allocations.
    pub fn clear(&mut self) {
        self.len = 0;
        self.keys.clear();
        self.key_offsets.truncate(1);
        self.timestamps.clear();
        self.inputs.clear();
        self.payloads.clear();
        self.payload_offsets.truncate(1);
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the batch has no events.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key of event `i`, if the offsets are well formed and the bytes are UTF-8.
    pub fn key(&self, i: usize) -> Option<&str> {
        let s = *self.key_offsets.get(i)? as usize;
        let e = *self.key_offsets.get(i + 1)? as usize;
        std::str::from_utf8(self.keys.get(s..e)?).ok()
    }

    /// The numeric inputs of event `i`.
    pub fn inputs_of(&self, i: usize) -> Option<&[f64]> {
        let d = self.input_dims as usize;
        self.inputs.get(i * d..(i + 1) * d)
    }

    /// Checks the columnar invariants: column lengths agree and offsets are monotone and in
    /// bounds. Used on plugin output before the host trusts it.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.len as usize;
        if self.timestamps.len() != n {
            return Err(format!(
                "{} timestamps for {n} events",
                self.timestamps.len()
            ));
        }
        if self.inputs.len() != n * self.input_dims as usize {
            return Err(format!(
                "{} input values for {n} events of {} dims",
                self.inputs.len(),
                self.input_dims
            ));
        }
        check_offsets("key", &self.key_offsets, n, self.keys.len())?;
        if !(self.payloads.is_empty() && self.payload_offsets.iter().all(|&o| o == 0)) {
            check_offsets("payload", &self.payload_offsets, n, self.payloads.len())?;
        }
        for i in 0..n {
            if self.key(i).is_none() {
                return Err(format!("key {i} is not UTF-8"));
            }
        }
        Ok(())
    }

    /// Approximate size of the batch in bytes.
    pub fn byte_size(&self) -> usize {
        self.keys.len()
            + self.payloads.len()
            + 4 * (self.key_offsets.len() + self.payload_offsets.len())
            + 8 * (self.timestamps.len() + self.inputs.len())
    }
}

fn check_offsets(
    what: &str,
    offs: &[u32],
    n: usize,
    total: usize,
) -> std::result::Result<(), String> {
    if offs.len() != n + 1 {
        return Err(format!("{} {what} offsets for {n} events", offs.len()));
    }
    if offs[0] != 0 || offs[n] as usize != total || offs.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!(
            "{what} offsets are not monotone within 0..={total}"
        ));
    }
    Ok(())
}

impl FeatureBatch {
    /// A batch of `rows` x `dims` values.
    pub fn new(rows: u32, dims: u32, values: Vec<f64>) -> Self {
        FeatureBatch { rows, dims, values }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Option<&[f64]> {
        let d = self.dims as usize;
        self.values.get(i * d..(i + 1) * d)
    }
}

impl WindowBatch {
    /// An empty window batch whose rows have `dims` values.
    pub fn with_dims(dims: u32) -> Self {
        WindowBatch {
            keys: Vec::new(),
            key_offsets: vec![0],
            starts: Vec::new(),
            ends: Vec::new(),
            row_offsets: vec![0],
            dims,
            values: Vec::new(),
            closing: Vec::new(),
        }
    }

    /// Appends a pane with its new rows (each `dims` values, concatenated).
    pub fn push(&mut self, key: &str, start: i64, end: i64, rows: &[f64], closing: bool) {
        self.keys.extend_from_slice(key.as_bytes());
        self.key_offsets.push(self.keys.len() as u32);
        self.starts.push(start);
        self.ends.push(end);
        self.values.extend_from_slice(rows);
        let d = (self.dims as usize).max(1);
        self.row_offsets.push((self.values.len() / d) as u32);
        self.closing.push(closing);
    }

    /// Number of panes.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True when there are no panes.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}
