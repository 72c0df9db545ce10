#![doc = include_str!("../README.md")]

pub use weir_sdk_macros::{extractor, model, operator};

mod error;
pub mod math;
#[cfg(test)]
mod tests;
mod views;

pub use error::{Error, Result};
pub use views::{Event, Events, Output, Pane, Panes, Rows};

/// Bindings generated from `wit/` (package `weir:operator@0.1.0`), one module per world.
/// Plugin authors do not need them; the attribute macros use them.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unsafe_code, clippy::all)]

    pub mod extractor {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "extractor-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_extractor",
            default_bindings_module: "weir_sdk::bindings::extractor",
        });
    }

    pub mod model {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "model-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_model",
            default_bindings_module: "weir_sdk::bindings::model",
            with: {
                "weir:operator/types@0.1.0": crate::bindings::extractor::weir::operator::types,
                "weir:operator/log@0.1.0": crate::bindings::extractor::weir::operator::log,
            },
        });
    }

    pub mod operator {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "operator-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_operator",
            default_bindings_module: "weir_sdk::bindings::operator",
            with: {
                "weir:operator/types@0.1.0": crate::bindings::extractor::weir::operator::types,
                "weir:operator/log@0.1.0": crate::bindings::extractor::weir::operator::log,
                "weir:operator/state@0.1.0": crate::bindings::extractor::weir::operator::state,
            },
        });
    }

    pub use extractor::weir::operator::types::{
        EventBatch, FeatureBatch, PluginError, WindowBatch,
    };
}

/// Logging from a plugin. Lines are kept per plugin by the host, capped per call, and
/// readable over the API. `println!` and `eprintln!` are captured too. The macros
/// [`trace!`], [`debug!`], [`info!`], [`warn!`] and [`error!`] take `format!` arguments.
pub mod log {
    use crate::bindings::extractor::weir::operator::log::{Level, log};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Logs a `format!`-style message at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::trace(&::std::format!($($arg)*)) };
}
/// Logs a `format!`-style message at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}
/// Logs a `format!`-style message at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}
/// Logs a `format!`-style message at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}
/// Logs a `format!`-style message at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}

/// Keyed state kept by the host, scoped to this tenant, pipeline and stage, and
/// checkpointed with the stream. Available to extractors and operators (models keep their
/// parameters in `snapshot`/`restore` instead).
pub mod state {
    use crate::bindings::extractor::weir::operator::state as wit;

    /// Reads the value under (`key`, `name`).
    pub fn get(key: &str, name: &str) -> Option<Vec<u8>> {
        wit::get(key, name)
    }
    /// Stores `value` under (`key`, `name`).
    pub fn put(key: &str, name: &str, value: &[u8]) {
        wit::put(key, name, value)
    }
    /// Removes the value under (`key`, `name`).
    pub fn delete(key: &str, name: &str) {
        wit::delete(key, name)
    }
    /// Reads a list of f64 stored by [`put_f64s`]: `None` when nothing is stored, or when
    /// the value is not a whole number of f64s.
    pub fn get_f64s(key: &str, name: &str) -> Option<Vec<f64>> {
        decode_f64s(&get(key, name)?)
    }
    /// Stores a list of f64, as 8 little-endian bytes each.
    pub fn put_f64s(key: &str, name: &str, values: &[f64]) {
        put(key, name, &encode_f64s(values))
    }

    /// Many entries in one host call each way: an operator that folds many panes reads
    /// their state with one [`Batch::get`] and writes it back with one [`Batch::put`],
    /// instead of a host call per pane.
    ///
    /// ```ignore
    /// let mut batch = state::Batch::new();
    /// for pane in panes.iter() {
    ///     batch.entry(pane.key(), &format!("w{}", pane.start()));
    /// }
    /// let old = batch.get(); // one value (or None) per entry, in order
    /// // ... fold, then set or delete each entry ...
    /// batch.put(&new);       // Some(bytes) writes, None removes
    /// ```
    #[derive(Debug)]
    pub struct Batch {
        entries: wit::Entries,
    }

    impl Default for Batch {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Batch {
        /// An empty batch.
        pub fn new() -> Self {
            Batch {
                entries: wit::Entries {
                    keys: Vec::new(),
                    key_offsets: vec![0],
                    names: Vec::new(),
                    name_offsets: vec![0],
                },
            }
        }

        /// Adds the entry (`key`, `name`).
        pub fn entry(&mut self, key: &str, name: &str) {
            let e = &mut self.entries;
            e.keys.extend_from_slice(key.as_bytes());
            e.key_offsets.push(e.keys.len() as u32);
            e.names.extend_from_slice(name.as_bytes());
            e.name_offsets.push(e.names.len() as u32);
        }

        /// Adds the entry (`key`, a name formatted in place), with no `String` per entry:
        /// `batch.entry_fmt(pane.key(), format_args!("w{}", pane.start()))`.
        pub fn entry_fmt(&mut self, key: &str, name: std::fmt::Arguments<'_>) {
            use std::io::Write as _;
            let e = &mut self.entries;
            e.keys.extend_from_slice(key.as_bytes());
            e.key_offsets.push(e.keys.len() as u32);
            // Writing into a Vec<u8> cannot fail.
            let _ = e.names.write_fmt(name);
            e.name_offsets.push(e.names.len() as u32);
        }

        /// Reads every entry, in one host call, without copying each value out:
        /// `values.get(i)` is entry `i`'s value.
        pub fn read(&self) -> Values {
            if self.is_empty() {
                return Values(wit::Values {
                    present: Vec::new(),
                    bytes: Vec::new(),
                    offsets: vec![0],
                });
            }
            Values(wit::get_many(&self.entries))
        }

        /// Applies `writes` (one per entry, in order) in one host call. Panics if their
        /// number differs from the entries', which is a bug in the plugin.
        pub fn write(&self, writes: &Writes) {
            assert_eq!(writes.len(), self.len(), "one write per entry");
            if !self.is_empty() {
                wit::put_many(&self.entries, &writes.0);
            }
        }

        /// Entries added.
        pub fn len(&self) -> usize {
            self.entries.key_offsets.len() - 1
        }

        /// True when no entry was added.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Reads every entry: one value (`None` when nothing is stored) per entry, in order.
        pub fn get(&self) -> Vec<Option<Vec<u8>>> {
            if self.is_empty() {
                return Vec::new();
            }
            let v = wit::get_many(&self.entries);
            (0..v.present.len())
                .map(|i| {
                    let (a, b) = (v.offsets[i] as usize, v.offsets[i + 1] as usize);
                    v.present[i].then(|| v.bytes[a..b].to_vec())
                })
                .collect()
        }

        /// Writes `values[i]` to entry `i`, or removes the entry where it is `None`.
        /// `values` has one item per entry.
        pub fn put(&self, values: &[Option<&[u8]>]) {
            if self.is_empty() {
                return;
            }
            let mut v = wit::Values {
                present: Vec::with_capacity(values.len()),
                bytes: Vec::new(),
                offsets: vec![0],
            };
            for x in values {
                v.present.push(x.is_some());
                if let Some(b) = x {
                    v.bytes.extend_from_slice(b);
                }
                v.offsets.push(v.bytes.len() as u32);
            }
            wit::put_many(&self.entries, &v);
        }
    }

    /// Values read by [`Batch::read`], one per entry.
    #[derive(Debug)]
    pub struct Values(wit::Values);

    impl Values {
        /// Entry `i`'s value, or `None` when nothing is stored (or past the end).
        pub fn get(&self, i: usize) -> Option<&[u8]> {
            let v = &self.0;
            if !*v.present.get(i)? {
                return None;
            }
            let (a, b) = (*v.offsets.get(i)? as usize, *v.offsets.get(i + 1)? as usize);
            v.bytes.get(a..b)
        }
        /// Number of entries.
        pub fn len(&self) -> usize {
            self.0.present.len()
        }
        /// True when there are none.
        pub fn is_empty(&self) -> bool {
            self.0.present.is_empty()
        }
    }

    /// Writes for [`Batch::write`], one per entry in order, built without a buffer per
    /// value.
    #[derive(Debug)]
    pub struct Writes(wit::Values);

    impl Default for Writes {
        fn default() -> Self {
            Self::with_capacity(0, 0)
        }
    }

    impl Writes {
        /// Room for `entries` writes of `bytes` bytes in all.
        pub fn with_capacity(entries: usize, bytes: usize) -> Self {
            let mut offsets = Vec::with_capacity(entries + 1);
            offsets.push(0);
            Writes(wit::Values {
                present: Vec::with_capacity(entries),
                bytes: Vec::with_capacity(bytes),
                offsets,
            })
        }
        /// The next entry gets `value`.
        pub fn set(&mut self, value: &[u8]) {
            self.0.bytes.extend_from_slice(value);
            self.push(true);
        }
        /// The next entry gets `values`, encoded as [`encode_f64s`] does.
        pub fn set_f64s(&mut self, values: &[f64]) {
            for v in values {
                self.0.bytes.extend_from_slice(&v.to_le_bytes());
            }
            self.push(true);
        }
        /// The next entry is removed.
        pub fn remove(&mut self) {
            self.push(false);
        }
        fn push(&mut self, present: bool) {
            self.0.present.push(present);
            self.0.offsets.push(self.0.bytes.len() as u32);
        }
        /// Writes so far.
        pub fn len(&self) -> usize {
            self.0.present.len()
        }
        /// What reading the entries back would give (for tests).
        #[cfg(test)]
        pub(crate) fn as_read(&self) -> Values {
            Values(self.0.clone())
        }
        /// True when there are none.
        pub fn is_empty(&self) -> bool {
            self.0.present.is_empty()
        }
    }

    /// The encoding of [`put_f64s`]: 8 little-endian bytes per value.
    pub fn encode_f64s(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
    /// Decodes [`encode_f64s`]; `None` when `bytes` is not a whole number of f64s.
    pub fn decode_f64s(bytes: &[u8]) -> Option<Vec<f64>> {
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() / 8);
        for chunk in bytes.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            out.push(f64::from_le_bytes(b));
        }
        Some(out)
    }
}

/// A model: scores feature rows; optionally learns, and snapshots its parameters.
///
/// Implement it and put `#[weir_sdk::model]` on the `impl` block.
pub trait Model: Sized + 'static {
    /// The stage's configuration, parsed from JSON.
    type Config: serde::de::DeserializeOwned;

    /// Builds the model from its configuration.
    fn new(config: Self::Config) -> Result<Self>;

    /// Scores one feature row.
    fn predict(&self, row: &[f64]) -> Result<f64>;

    /// Scores a whole batch, pushing one score per row onto `out`, in order. The default
    /// calls [`predict`](Model::predict) per row. Override it when a loop over the batch
    /// is faster than a call per row: for example with the row width fixed at compile
    /// time, so the compiler unrolls it (see the `scaled-logistic` example plugin).
    fn predict_batch(&self, rows: &Rows<'_>, out: &mut Vec<f64>) -> Result<()> {
        for (i, row) in rows.iter().enumerate() {
            out.push(self.predict(row).map_err(|e| e.at("row", i))?);
        }
        Ok(())
    }

    /// Learns from one labelled row (called after `predict` on the same row). The default
    /// does not learn.
    fn learn(&mut self, row: &[f64], label: f64) -> Result<()> {
        let _ = (row, label);
        Err(Error::unsupported("this model does not learn online"))
    }

    /// Serialises the learned parameters. The default has none.
    fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Restores parameters from a snapshot. The default refuses.
    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let _ = snapshot;
        Err(Error::unsupported("this model has no snapshot format"))
    }
}

/// A general stream operator, with keyed state through [`state`].
///
/// Implement it and put `#[weir_sdk::operator]` on the `impl` block.
pub trait Operator: Sized + 'static {
    /// The stage's configuration, parsed from JSON.
    type Config: serde::de::DeserializeOwned;

    /// Builds the operator from its configuration.
    fn open(config: Self::Config) -> Result<Self>;

    /// Processes a batch of events; emits zero or more events. The default emits nothing.
    fn process(&mut self, events: &Events<'_>, out: &mut Output) -> Result<()> {
        let _ = (events, out);
        Ok(())
    }

    /// Handles fired windows; emits zero or more events. The default emits nothing.
    fn on_window(&mut self, panes: &Panes<'_>, out: &mut Output) -> Result<()> {
        let _ = (panes, out);
        Ok(())
    }
}

/// Glue used by the macros. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::{EventBatch, FeatureBatch, PluginError, WindowBatch};
    use crate::{Error, Events, Model, Operator, Output, Panes, Rows};

    /// Parses a stage config; an empty string means `{}`.
    pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PluginError> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        serde_json::from_str(text).map_err(|e| PluginError::InvalidConfig(e.to_string()))
    }

    /// The error for a call before `init`.
    pub fn not_initialised() -> PluginError {
        PluginError::Internal("the plugin was called before init".into())
    }

    /// Runs a per-event extractor function over a batch.
    pub fn run_extractor(
        events: &EventBatch,
        mut f: impl FnMut(&crate::Event<'_>, &mut Vec<f64>) -> crate::Result<()>,
    ) -> Result<FeatureBatch, PluginError> {
        let events = Events::new(events)?;
        let mut values = Vec::with_capacity(events.len() * (events.input_dims() + 1));
        let mut dims = None;
        for (i, ev) in events.iter().enumerate() {
            let before = values.len();
            f(&ev, &mut values).map_err(|e| e.at("event", i))?;
            let width = values.len() - before;
            match dims {
                None => dims = Some(width),
                Some(d) if d != width => {
                    return Err(Error::input(format!(
                        "event {i} produced {width} features, earlier events {d}"
                    ))
                    .into());
                }
                Some(_) => {}
            }
        }
        Ok(FeatureBatch {
            rows: events.len() as u32,
            dims: dims.unwrap_or(0) as u32,
            values,
        })
    }

    /// `predict` over a batch.
    pub fn run_predict<M: Model>(
        model: &M,
        features: &FeatureBatch,
    ) -> Result<Vec<f64>, PluginError> {
        let rows = Rows::new(features)?;
        let mut out = Vec::with_capacity(rows.len());
        model.predict_batch(&rows, &mut out)?;
        if out.len() != rows.len() {
            return Err(Error::internal(format!(
                "predict_batch gave {} scores for {} rows",
                out.len(),
                rows.len()
            ))
            .into());
        }
        Ok(out)
    }

    /// Prequential `train` over a batch: predict, then learn, row by row.
    pub fn run_train<M: Model>(
        model: &mut M,
        features: &FeatureBatch,
        labels: &[f64],
    ) -> Result<Vec<f64>, PluginError> {
        let rows = Rows::new(features)?;
        if labels.len() != rows.len() {
            return Err(
                Error::input(format!("{} labels for {} rows", labels.len(), rows.len())).into(),
            );
        }
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            out.push(model.predict(row).map_err(|e| e.at("row", i))?);
            model.learn(row, labels[i]).map_err(|e| e.at("row", i))?;
        }
        Ok(out)
    }

    /// `process` over a batch.
    pub fn run_process<O: Operator>(
        op: &mut O,
        events: &EventBatch,
    ) -> Result<EventBatch, PluginError> {
        let events = Events::new(events)?;
        let mut out = Output::new();
        op.process(&events, &mut out)?;
        Ok(out.finish())
    }

    /// `on-window` over a batch.
    pub fn run_on_window<O: Operator>(
        op: &mut O,
        windows: &WindowBatch,
    ) -> Result<EventBatch, PluginError> {
        let panes = Panes::new(windows)?;
        let mut out = Output::new();
        op.on_window(&panes, &mut out)?;
        Ok(out.finish())
    }
}
