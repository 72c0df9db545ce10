//! A step's records, parsed: the columnar batch both sides of the step read, and what did not
//! make an event (records that do not parse, label records). Parsing touches nothing of the
//! pipeline's, so a big step is parsed in two halves at once (see `Pipeline::parse_step`).

use super::SourceRecord;
use crate::SourcePos;
use crate::parse::RecordParser;
use weir_engine::EventBatch;

/// One step's events as parsed: the columnar batch, and per event its source position, its
/// record's index in the step, its label (with a label field) and its id (when labels join
/// later). Its buffers are kept across steps.
pub(crate) struct Parsed {
    pub(crate) batch: EventBatch,
    pub(crate) positions: Vec<SourcePos>,
    pub(crate) raw: Vec<usize>,
    pub(super) labels: Vec<f64>,
    pub(super) ids: Vec<Option<String>>,
    /// Records that did not parse: (index in the step, why).
    pub(super) failed: Vec<(usize, String)>,
    /// Label records: (key, id, label).
    pub(super) label_records: Vec<(String, String, f64)>,
}

impl Default for Parsed {
    /// An empty stand-in, while the pipeline's own is out for a step.
    fn default() -> Self {
        Parsed::new(0)
    }
}

/// How a pipeline reads its records.
pub(super) struct ParseOptions<'p> {
    pub(super) parser: &'p RecordParser,
    /// Events carry their raw payload to the plugins.
    pub(super) with_payload: bool,
    /// The source has a label field.
    pub(super) has_labels: bool,
}

impl Parsed {
    pub(super) fn new(dims: usize) -> Self {
        Parsed {
            batch: EventBatch::with_dims(dims as u32),
            positions: Vec::new(),
            raw: Vec::new(),
            labels: Vec::new(),
            ids: Vec::new(),
            failed: Vec::new(),
            label_records: Vec::new(),
        }
    }

    /// Empties it, keeping the buffers (and the batch's input width).
    pub(super) fn clear(&mut self) {
        self.batch.clear();
        self.positions.clear();
        self.raw.clear();
        self.labels.clear();
        self.ids.clear();
        self.failed.clear();
        self.label_records.clear();
    }

    /// Parses `records`, the step's records from index `first` on, appending.
    pub(super) fn parse(
        &mut self,
        how: &ParseOptions<'_>,
        records: &[SourceRecord<'_>],
        first: usize,
    ) {
        for (i, r) in records.iter().enumerate() {
            let i = first + i;
            match how.parser.parse(r.payload, &mut self.batch.inputs) {
                Ok(p) if p.label_only => {
                    if let (Some(id), Some(label)) = (p.id, p.label) {
                        self.label_records
                            .push((p.key.into_owned(), id.into_owned(), label));
                    }
                }
                Ok(p) => {
                    if how.parser.id_field.is_some() {
                        self.ids.push(p.id.as_ref().map(|c| c.to_string()));
                    }
                    if how.has_labels {
                        self.labels.push(p.label.unwrap_or(f64::NAN));
                    }
                    let b = &mut self.batch;
                    b.keys.extend_from_slice(p.key.as_bytes());
                    b.key_offsets.push(b.keys.len() as u32);
                    b.timestamps.push(p.ts);
                    if how.with_payload {
                        b.payloads.extend_from_slice(r.payload);
                    }
                    b.payload_offsets.push(b.payloads.len() as u32);
                    b.len += 1;
                    self.positions.push(SourcePos {
                        partition: r.partition,
                        offset: r.offset,
                    });
                    self.raw.push(i);
                }
                Err(reason) => self.failed.push((i, reason)),
            }
        }
    }

    /// Appends `tail`, parsed from the records after this one's, leaving it empty (its
    /// buffers kept).
    pub(super) fn append(&mut self, tail: &mut Parsed) {
        let (b, t) = (&mut self.batch, &tail.batch);
        let (keys, payloads) = (b.keys.len() as u32, b.payloads.len() as u32);
        b.keys.extend_from_slice(&t.keys);
        b.key_offsets
            .extend(t.key_offsets.iter().skip(1).map(|o| o + keys));
        b.timestamps.extend_from_slice(&t.timestamps);
        b.inputs.extend_from_slice(&t.inputs);
        b.payloads.extend_from_slice(&t.payloads);
        b.payload_offsets
            .extend(t.payload_offsets.iter().skip(1).map(|o| o + payloads));
        b.len += t.len;
        self.positions.extend_from_slice(&tail.positions);
        self.raw.extend_from_slice(&tail.raw);
        self.labels.extend_from_slice(&tail.labels);
        self.ids.append(&mut tail.ids);
        self.failed.append(&mut tail.failed);
        self.label_records.append(&mut tail.label_records);
        tail.clear();
    }
}
