//! Per-instance host state: the WASI context (empty: no preopens, no env, no network), the
//! resource limiter, captured logs, and the keyed-state backend behind the `state` import.

use crate::bindings::LogLevel;
use crate::bindings::operator::weir::operator::{log, state};
use crate::manifest::Limits;
use bytes::Bytes;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Keyed state as a plugin sees it. The host hands each stage instance a store already
/// scoped to its tenant, pipeline and stage, so a plugin names only the record key and an
/// entry name.
pub trait KeyedState: Send {
    /// Reads an entry.
    fn get(&mut self, key: &str, name: &str) -> Option<Vec<u8>>;
    /// Writes an entry.
    fn put(&mut self, key: &str, name: &str, value: Vec<u8>);
    /// Removes an entry.
    fn delete(&mut self, key: &str, name: &str);
    /// Reads many entries: appends each present value to `out.bytes` (a store can do it
    /// without copying each value into a vector of its own, under one lock).
    fn get_many(&mut self, entries: &[(&str, &str)], out: &mut StateValues) {
        for (k, n) in entries {
            out.push(self.get(k, n).as_deref());
        }
    }
    /// Writes (`Some`) or removes (`None`) many entries. A store can copy a value over the
    /// one it replaces, without allocating.
    fn put_many(&mut self, changes: &[(&str, &str, Option<&[u8]>)]) {
        for &(k, n, v) in changes {
            match v {
                Some(v) => self.put(k, n, v.to_vec()),
                None => self.delete(k, n),
            }
        }
    }
}

/// Values read by [`KeyedState::get_many`], columnar as the `state` import returns them.
#[derive(Debug, Default)]
pub struct StateValues {
    /// Whether each entry had a value.
    pub present: Vec<bool>,
    /// The values, back to back.
    pub bytes: Vec<u8>,
    /// Value `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<u32>,
}

impl StateValues {
    /// Appends one entry's value (`None` when absent).
    pub fn push(&mut self, value: Option<&[u8]>) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.present.push(value.is_some());
        if let Some(v) = value {
            self.bytes.extend_from_slice(v);
        }
        self.offsets.push(self.bytes.len() as u32);
    }
}

/// In-memory [`KeyedState`], the default: one table of `(key, name)` entries. A window
/// operator's entries live for a pane each, so an entry costs one allocation for its key
/// and name and one for its value, and a rewrite copies over the value in place.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    entries: hashbrown::HashTable<Entry>,
    /// foldhash, seeded per store: the keys are users' event keys, looked up per pane.
    hasher: foldhash::fast::RandomState,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The key, then the name (`split` bytes in).
    id: Box<str>,
    split: usize,
    value: Vec<u8>,
}

impl Entry {
    fn is(&self, key: &str, name: &str) -> bool {
        self.split == key.len()
            && self.id.len() == key.len() + name.len()
            && self.id.starts_with(key)
            && self.id.ends_with(name)
    }

    fn parts(&self) -> (&str, &str) {
        self.id.split_at(self.split)
    }
}

impl MemoryState {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, key: &str, name: &str) -> u64 {
        self.hasher.hash_one((key, name))
    }

    fn find(&self, key: &str, name: &str) -> Option<&Entry> {
        self.entries.find(self.hash(key, name), |e| e.is(key, name))
    }

    /// Adds an entry known to be absent, `h` its hash.
    fn insert_new(&mut self, h: u64, key: &str, name: &str, value: Vec<u8>) {
        let hasher = &self.hasher;
        self.entries.insert_unique(
            h,
            Entry {
                id: format!("{key}{name}").into_boxed_str(),
                split: key.len(),
                value,
            },
            |e| hasher.hash_one(e.parts()),
        );
    }
}

impl KeyedState for MemoryState {
    fn get(&mut self, key: &str, name: &str) -> Option<Vec<u8>> {
        self.find(key, name).map(|e| e.value.clone())
    }
    fn get_many(&mut self, entries: &[(&str, &str)], out: &mut StateValues) {
        for (k, n) in entries {
            out.push(self.find(k, n).map(|e| e.value.as_slice()));
        }
    }
    fn put(&mut self, key: &str, name: &str, value: Vec<u8>) {
        let h = self.hash(key, name);
        if let Some(e) = self.entries.find_mut(h, |e| e.is(key, name)) {
            e.value = value;
            return;
        }
        self.insert_new(h, key, name, value);
    }
    fn delete(&mut self, key: &str, name: &str) {
        let h = self.hash(key, name);
        if let Ok(e) = self.entries.find_entry(h, |e| e.is(key, name)) {
            e.remove();
        }
    }
    fn put_many(&mut self, changes: &[(&str, &str, Option<&[u8]>)]) {
        for &(key, name, value) in changes {
            let Some(value) = value else {
                self.delete(key, name);
                continue;
            };
            let h = self.hash(key, name);
            match self.entries.find_mut(h, |e| e.is(key, name)) {
                Some(e) => {
                    e.value.clear();
                    e.value.extend_from_slice(value);
                }
                None => self.insert_new(h, key, name, value.to_vec()),
            }
        }
    }
}

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Severity (`stdout` lines are `info`, `stderr` lines are `warn`).
    pub level: &'static str,
    /// The text, truncated to the manifest's `log_line_bytes`.
    pub message: String,
}

/// Captured log lines of one plugin instance: the most recent ones are kept, and lines over
/// the per-call cap are counted as dropped.
#[derive(Debug)]
pub struct LogBuffer {
    inner: Mutex<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    lines: VecDeque<LogLine>,
    keep: usize,
    per_call: usize,
    line_bytes: usize,
    this_call: usize,
    dropped: u64,
    /// The message of the last Rust panic seen on stderr during this call.
    panic: Option<String>,
    expect_panic_message: bool,
    partial: [Vec<u8>; 2],
}

impl LogBuffer {
    /// A buffer that keeps the last `keep` lines.
    pub fn new(limits: &Limits, keep: usize) -> Self {
        LogBuffer {
            inner: Mutex::new(LogInner {
                lines: VecDeque::new(),
                keep,
                per_call: limits.log_lines_per_call,
                line_bytes: limits.log_line_bytes,
                this_call: 0,
                dropped: 0,
                panic: None,
                expect_panic_message: false,
                partial: [Vec::new(), Vec::new()],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The retained lines, oldest first.
    pub fn lines(&self) -> Vec<LogLine> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Takes the retained lines out, oldest first (a host that forwards logs elsewhere
    /// calls this after each call).
    pub fn drain(&self) -> Vec<LogLine> {
        let mut g = self.lock();
        if g.lines.is_empty() {
            return Vec::new();
        }
        g.lines.drain(..).collect()
    }

    /// Lines refused because a call exceeded its cap.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub(crate) fn start_call(&self) {
        let mut g = self.lock();
        g.this_call = 0;
        g.panic = None;
        g.expect_panic_message = false;
    }

    /// Flushes unterminated stdout/stderr text and returns the panic message, if any.
    pub(crate) fn end_call(&self) -> Option<String> {
        let mut g = self.lock();
        for i in 0..2 {
            let rest = std::mem::take(&mut g.partial[i]);
            if !rest.is_empty() {
                let level = if i == 0 { "info" } else { "warn" };
                g.push(level, &String::from_utf8_lossy(&rest));
            }
        }
        g.panic.take()
    }

    pub(crate) fn push(&self, level: &'static str, message: &str) {
        self.lock().push(level, message);
    }

    fn write_stream(&self, stream: usize, bytes: &[u8]) {
        let mut g = self.lock();
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut g.partial[stream]);
            line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            let text = String::from_utf8_lossy(&line).into_owned();
            if stream == 1 {
                g.note_stderr(&text);
            }
            g.push(if stream == 0 { "info" } else { "warn" }, &text);
        }
        let cap = g.line_bytes;
        let partial = &mut g.partial[stream];
        let room = cap.saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }
}

impl LogInner {
    fn push(&mut self, level: &'static str, message: &str) {
        if self.this_call >= self.per_call {
            self.dropped += 1;
            return;
        }
        self.this_call += 1;
        let mut message = message.to_string();
        if message.len() > self.line_bytes {
            let mut cut = self.line_bytes;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        if self.lines.len() >= self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(LogLine { level, message });
    }

    /// Rust's panic hook prints "thread '…' panicked at file:line:col:" then the message.
    fn note_stderr(&mut self, line: &str) {
        if self.expect_panic_message {
            self.panic = Some(line.to_string());
            self.expect_panic_message = false;
        } else if line.contains("panicked at") {
            self.expect_panic_message = true;
            self.panic = Some(String::new());
        }
    }
}

/// stdout (0) or stderr (1) of a plugin, captured into its [`LogBuffer`].
#[derive(Clone)]
pub(crate) struct CapturedStream {
    logs: Arc<LogBuffer>,
    stream: usize,
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.logs.write_stream(self.stream, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.logs.write_stream(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Memory, table and instance limits of one store. Records whether a memory growth was
/// refused, so an out-of-memory trap can be told from a plain panic.
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    tables: usize,
    instances: usize,
    memories: usize,
    pub(crate) denied_memory: bool,
}

impl Limiter {
    pub(crate) fn new(l: &Limits) -> Self {
        Limiter {
            memory_bytes: l.memory_bytes,
            table_elements: l.table_elements,
            tables: l.tables,
            instances: l.instances,
            memories: l.memories,
            denied_memory: false,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied_memory = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
    fn instances(&self) -> usize {
        self.instances
    }
    fn tables(&self) -> usize {
        self.tables
    }
    fn memories(&self) -> usize {
        self.memories
    }
}

/// The `T` of every plugin `Store<T>`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) logs: Arc<LogBuffer>,
    pub(crate) state: Box<dyn KeyedState>,
    state_value_bytes: usize,
}

impl HostState {
    pub(crate) fn new(limits: &Limits, logs: Arc<LogBuffer>, state: Box<dyn KeyedState>) -> Self {
        let wasi = WasiCtxBuilder::new()
            .stdout(CapturedStream {
                logs: logs.clone(),
                stream: 0,
            })
            .stderr(CapturedStream {
                logs: logs.clone(),
                stream: 1,
            })
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
            logs,
            state,
            state_value_bytes: limits.state_value_bytes,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        self.logs.push(level, &message);
        Ok(())
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: String, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.state.get(&key, &name))
    }
    fn put(&mut self, key: String, name: String, value: Vec<u8>) -> wasmtime::Result<()> {
        if value.len() > self.state_value_bytes {
            return Err(wasmtime::format_err!(
                "state value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.state_value_bytes
            ));
        }
        self.state.put(&key, &name, value);
        Ok(())
    }
    fn delete(&mut self, key: String, name: String) -> wasmtime::Result<()> {
        self.state.delete(&key, &name);
        Ok(())
    }
    fn get_many(&mut self, entries: state::Entries) -> wasmtime::Result<state::Values> {
        let pairs = entry_pairs(&entries)?;
        let mut out = StateValues {
            present: Vec::with_capacity(pairs.len()),
            bytes: Vec::new(),
            offsets: Vec::with_capacity(pairs.len() + 1),
        };
        self.state.get_many(&pairs, &mut out);
        if out.offsets.is_empty() {
            out.offsets.push(0);
        }
        Ok(state::Values {
            present: out.present,
            bytes: out.bytes,
            offsets: out.offsets,
        })
    }
    fn put_many(&mut self, entries: state::Entries, values: state::Values) -> wasmtime::Result<()> {
        let pairs = entry_pairs(&entries)?;
        let n = pairs.len();
        if values.present.len() != n || values.offsets.len() != n + 1 {
            return Err(wasmtime::format_err!(
                "put-many: {} entries but {} values ({} offsets)",
                n,
                values.present.len(),
                values.offsets.len()
            ));
        }
        let mut changes = Vec::with_capacity(n);
        for (i, (k, name)) in pairs.into_iter().enumerate() {
            let value = if values.present[i] {
                let (a, b) = (values.offsets[i] as usize, values.offsets[i + 1] as usize);
                let v =
                    values.bytes.get(a..b).filter(|_| a <= b).ok_or_else(|| {
                        wasmtime::format_err!("put-many: value {i} is out of bounds")
                    })?;
                if v.len() > self.state_value_bytes {
                    return Err(wasmtime::format_err!(
                        "state value of {} bytes exceeds the limit of {} bytes",
                        v.len(),
                        self.state_value_bytes
                    ));
                }
                Some(v)
            } else {
                None
            };
            changes.push((k, name, value));
        }
        self.state.put_many(&changes);
        Ok(())
    }
}

/// The (key, name) pairs of a columnar `entries`, checked: offsets in bounds and
/// non-decreasing, text valid UTF-8. A plugin that breaks the layout gets an error, not a
/// panic.
fn entry_pairs(e: &state::Entries) -> wasmtime::Result<Vec<(&str, &str)>> {
    let col = |bytes: &'_ [u8],
               offsets: &'_ [u32],
               what: &str|
     -> wasmtime::Result<Vec<(usize, usize)>> {
        if offsets.is_empty() || offsets[0] != 0 {
            return Err(wasmtime::format_err!(
                "state entries: {what} offsets must start at 0"
            ));
        }
        let mut out = Vec::with_capacity(offsets.len() - 1);
        for w in offsets.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            if a > b || b > bytes.len() {
                return Err(wasmtime::format_err!(
                    "state entries: {what} offsets out of bounds"
                ));
            }
            out.push((a, b));
        }
        Ok(out)
    };
    let keys = col(&e.keys, &e.key_offsets, "key")?;
    let names = col(&e.names, &e.name_offsets, "name")?;
    if keys.len() != names.len() {
        return Err(wasmtime::format_err!(
            "state entries: {} keys but {} names",
            keys.len(),
            names.len()
        ));
    }
    fn text(b: &[u8]) -> wasmtime::Result<&str> {
        std::str::from_utf8(b).map_err(|_| wasmtime::format_err!("state entries: not UTF-8"))
    }
    keys.into_iter()
        .zip(names)
        .map(|((ka, kb), (na, nb))| Ok((text(&e.keys[ka..kb])?, text(&e.names[na..nb])?)))
        .collect()
}

impl crate::bindings::operator::weir::operator::types::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(
        keys: &str,
        key_offsets: &[u32],
        names: &str,
        name_offsets: &[u32],
    ) -> state::Entries {
        state::Entries {
            keys: keys.as_bytes().to_vec(),
            key_offsets: key_offsets.to_vec(),
            names: names.as_bytes().to_vec(),
            name_offsets: name_offsets.to_vec(),
        }
    }

    #[test]
    fn batched_entries_are_split_by_their_offsets() {
        let e = entries("u1u22", &[0, 2, 5], "w0w1000", &[0, 2, 7]);
        let pairs = entry_pairs(&e).expect("a valid layout");
        assert_eq!(pairs, vec![("u1", "w0"), ("u22", "w1000")]);
        let none = entries("", &[0], "", &[0]);
        assert_eq!(entry_pairs(&none).expect("no entries").len(), 0);
    }

    #[test]
    fn a_broken_layout_is_an_error_not_a_panic() {
        let cases = [
            (entries("u1", &[], "w0", &[0, 2]), "must start at 0"),
            (entries("u1", &[1, 2], "w0", &[0, 2]), "must start at 0"),
            (entries("u1", &[0, 3], "w0", &[0, 2]), "out of bounds"),
            (
                entries("u1u2", &[0, 3, 2], "w0w1", &[0, 2, 4]),
                "out of bounds",
            ),
            (
                entries("u1u2", &[0, 2, 4], "w0", &[0, 2]),
                "2 keys but 1 names",
            ),
            (
                state::Entries {
                    keys: vec![0xff, 0xfe],
                    key_offsets: vec![0, 2],
                    names: b"w0".to_vec(),
                    name_offsets: vec![0, 2],
                },
                "not UTF-8",
            ),
        ];
        for (e, want) in cases {
            let err = entry_pairs(&e).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }

    #[test]
    fn values_are_columnar_with_one_offset_more() {
        let mut v = StateValues::default();
        v.push(Some(b"ab"));
        v.push(None);
        v.push(Some(b"c"));
        assert_eq!(v.present, vec![true, false, true]);
        assert_eq!(v.offsets, vec![0, 2, 2, 3]);
        assert_eq!(v.bytes, b"abc");
    }

    /// Entries are told apart by key and name, not by their concatenation; a rewrite
    /// replaces, a removal removes, and the batched calls agree with the single ones.
    #[test]
    fn memory_state_keeps_entries_by_key_and_name() {
        let mut m = MemoryState::default();
        m.put("ab", "c", vec![1]);
        m.put("a", "bc", vec![2]);
        assert_eq!(m.get("ab", "c"), Some(vec![1]));
        assert_eq!(m.get("a", "bc"), Some(vec![2]));
        assert_eq!(m.get("abc", ""), None);
        assert_eq!(m.len(), 2);
        m.put_many(&[
            ("ab", "c", Some(&[7, 7][..])),
            ("k", "w0", Some(&[3][..])),
            ("a", "bc", None),
        ]);
        assert_eq!(m.get("ab", "c"), Some(vec![7, 7]));
        assert_eq!(m.get("a", "bc"), None);
        let mut v = StateValues::default();
        m.get_many(&[("k", "w0"), ("a", "bc"), ("ab", "c")], &mut v);
        assert_eq!(v.present, vec![true, false, true]);
        assert_eq!(v.bytes, [3, 7, 7]);
        m.delete("k", "w0");
        m.delete("k", "never");
        assert_eq!(m.len(), 1);
        assert!(!m.is_empty());
    }
}
