//! What a pipeline produces: output records, rendered as JSON straight into buffers that are
//! reused from batch to batch, so producing a result allocates nothing per record. The
//! worker hands the buffers' slices to the Kafka producer (which copies them into its own
//! batches) and, for the records a database keeps, copies them into the checkpoint.

use std::sync::Arc;

/// The typed parts of an output record, beside its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordMeta {
    /// Source partition of a per-event result; for a window result, the partition of its
    /// key (`-1` when unknown).
    pub partition: i32,
    /// Source (stream) position of a per-event result (`-1` for other records).
    pub offset: i64,
    /// Event time of a per-event result; window start of a window result.
    pub ts: i64,
    /// Window end of a window result (0 otherwise).
    pub window_end: i64,
    /// The model's score, when the pipeline has a model.
    pub score: Option<f64>,
    /// Version of the stage that produced the record (the model, or the window operator).
    pub version: Arc<str>,
    /// Version of the extractor, for per-event results.
    pub extractor_version: Arc<str>,
}

impl Default for RecordMeta {
    fn default() -> Self {
        RecordMeta {
            partition: -1,
            offset: -1,
            ts: 0,
            window_end: 0,
            score: None,
            version: Arc::from(""),
            extractor_version: Arc::from(""),
        }
    }
}

/// One output record, borrowed from its [`Records`].
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Message key.
    pub key: &'a str,
    /// JSON value.
    pub payload: &'a [u8],
    /// Its typed parts.
    pub meta: &'a RecordMeta,
}

impl Record<'_> {
    /// The JSON value as text (payloads are rendered as UTF-8).
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(self.payload).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
struct Item {
    key: (u32, u32),
    payload: (u32, u32),
    meta: RecordMeta,
}

/// Output records of one kind. Keys and payloads share one byte buffer.
#[derive(Debug, Default, Clone)]
pub struct Records {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

fn span(start: usize, end: usize) -> (u32, u32) {
    (
        u32::try_from(start).unwrap_or(u32::MAX),
        u32::try_from(end).unwrap_or(u32::MAX),
    )
}

impl Records {
    /// Records held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of keys and payloads held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Forgets every record, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    fn record<'a>(&'a self, it: &'a Item) -> Record<'a> {
        let b = |(s, e): (u32, u32)| &self.bytes[s as usize..e as usize];
        Record {
            key: std::str::from_utf8(b(it.key)).unwrap_or_default(),
            payload: b(it.payload),
            meta: &it.meta,
        }
    }

    /// Record `i`.
    pub fn get(&self, i: usize) -> Option<Record<'_>> {
        self.items.get(i).map(|it| self.record(it))
    }

    /// Every record, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Record<'_>> + '_ {
        self.items.iter().map(|it| self.record(it))
    }

    /// Appends a record whose payload `write` renders into the buffer.
    pub fn push_with(&mut self, key: &str, meta: RecordMeta, write: impl FnOnce(&mut Vec<u8>)) {
        let k0 = self.bytes.len();
        self.bytes.extend_from_slice(key.as_bytes());
        let k1 = self.bytes.len();
        write(&mut self.bytes);
        let p1 = self.bytes.len();
        self.items.push(Item {
            key: span(k0, k1),
            payload: span(k1, p1),
            meta,
        });
    }

    /// Appends a record.
    pub fn push(&mut self, key: &str, payload: &[u8], meta: RecordMeta) {
        self.push_with(key, meta, |b| b.extend_from_slice(payload));
    }

    /// Appends copies of `other`'s records from index `from` on.
    pub fn extend_from(&mut self, other: &Records, from: usize) {
        for it in other.items.iter().skip(from) {
            let r = other.record(it);
            self.push(r.key, r.payload, r.meta.clone());
        }
    }

    /// Moves every record of `other` here.
    pub fn append(&mut self, other: &mut Records) {
        if self.items.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        self.extend_from(other, 0);
        other.clear();
    }
}

/// What one call produced, by output.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Per-event results.
    pub results: Records,
    /// Window results.
    pub windows: Records,
    /// Events too late for every window.
    pub late: Records,
    /// Records that could not be processed, with the reason.
    pub dead: Records,
    /// Scores of the model's shadow, if one runs: never part of the real output.
    pub shadow: Records,
}

impl Outputs {
    /// Empties every output, keeping the buffers.
    pub fn clear(&mut self) {
        self.results.clear();
        self.windows.clear();
        self.late.clear();
        self.dead.clear();
        self.shadow.clear();
    }
    /// Total records.
    pub fn len(&self) -> usize {
        self.results.len()
            + self.windows.len()
            + self.late.len()
            + self.dead.len()
            + self.shadow.len()
    }
    /// True when nothing was produced.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json writes into a Vec<u8> without failing.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends a float as JSON: the shortest representation that reads back the same value,
/// and `null` for NaN and infinities (which JSON cannot carry).
pub fn push_f64(out: &mut Vec<u8>, x: f64) {
    let _ = serde_json::to_writer(&mut *out, &x);
}

/// Appends an integer.
pub fn push_i64(out: &mut Vec<u8>, x: i64) {
    let _ = serde_json::to_writer(&mut *out, &x);
}

/// Formats a float as JSON (`null` for NaN and infinities).
pub fn fmt_f64(x: f64) -> String {
    let mut b = Vec::with_capacity(24);
    push_f64(&mut b, x);
    String::from_utf8(b).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_share_one_buffer_and_read_back() {
        let mut r = Records::default();
        r.push_with("u1", RecordMeta::default(), |b| {
            b.extend_from_slice(b"{\"score\":");
            push_f64(b, 0.25);
            b.push(b'}');
        });
        r.push(
            "k\u{e9}y",
            b"{}",
            RecordMeta {
                offset: 7,
                ..RecordMeta::default()
            },
        );
        assert_eq!(r.len(), 2);
        let a = r.get(0).unwrap();
        assert_eq!((a.key, a.payload_str()), ("u1", "{\"score\":0.25}"));
        let b = r.get(1).unwrap();
        assert_eq!(
            (b.key, b.payload, b.meta.offset),
            ("k\u{e9}y", &b"{}"[..], 7)
        );
        let mut all = Records::default();
        all.push("x", b"1", RecordMeta::default());
        all.append(&mut r);
        assert!(r.is_empty());
        let keys: Vec<&str> = all.iter().map(|x| x.key).collect();
        assert_eq!(keys, ["x", "u1", "k\u{e9}y"]);
        let mut tail = Records::default();
        tail.extend_from(&all, 1);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail.get(0).unwrap().payload_str(), "{\"score\":0.25}");
    }

    #[test]
    fn json_scalars() {
        let mut b = Vec::new();
        push_f64(&mut b, f64::NAN);
        b.push(b',');
        push_f64(&mut b, 1e-7);
        b.push(b',');
        push_i64(&mut b, -42);
        b.push(b',');
        push_json_str(&mut b, "a\"b");
        assert_eq!(String::from_utf8(b).unwrap(), "null,1e-7,-42,\"a\\\"b\"");
        assert_eq!(fmt_f64(0.1), "0.1");
    }
}
