//! Unit tests of the views and the glue, on the host target (no imports are called).

use crate::__private::*;
use crate::{Error, Event, Events, Model, Output, Panes, Result, Rows, state};

fn events(keys: &[&str], dims: u32, inputs: Vec<f64>, payloads: Option<&[&str]>) -> EventBatch {
    let mut b = EventBatch {
        len: keys.len() as u32,
        keys: Vec::new(),
        key_offsets: vec![0],
        timestamps: (0..keys.len() as i64).map(|i| 1000 + i).collect(),
        input_dims: dims,
        inputs,
        payloads: Vec::new(),
        payload_offsets: vec![0; keys.len() + 1],
    };
    for k in keys {
        b.keys.extend_from_slice(k.as_bytes());
        b.key_offsets.push(b.keys.len() as u32);
    }
    if let Some(ps) = payloads {
        b.payload_offsets = vec![0];
        for p in ps {
            b.payloads.extend_from_slice(p.as_bytes());
            b.payload_offsets.push(b.payloads.len() as u32);
        }
    }
    b
}

fn is_input<T>(r: std::result::Result<T, impl Into<PluginError>>) -> bool {
    matches!(r.map_err(Into::into), Err(PluginError::InvalidInput(_)))
}

#[test]
fn events_are_viewed_per_event() {
    let b = events(&["a", "ü2"], 2, vec![1.0, 2.0, 3.0, 4.0], None);
    let ev = Events::new(&b).unwrap();
    assert_eq!((ev.len(), ev.input_dims()), (2, 2));
    let all: Vec<Event<'_>> = ev.iter().collect();
    assert_eq!(all[1], Event::new("ü2", 1001, &[3.0, 4.0], None));
    assert_eq!(all[0].key(), "a");
    assert_eq!(all[0].payload(), None);
    assert!(ev.get(2).is_none());

    let b = events(&["a", "b"], 0, vec![], Some(&["{}", r#"{"x":1}"#]));
    let ev = Events::new(&b).unwrap();
    assert_eq!(ev.get(1).unwrap().payload(), Some(r#"{"x":1}"#));
    assert_eq!(ev.get(1).unwrap().inputs(), &[] as &[f64]);
}

#[test]
fn malformed_event_batches_are_input_errors() {
    let good = events(&["a", "bb"], 1, vec![1.0, 2.0], None);
    let mut b = good.clone();
    b.key_offsets[1] = 9;
    assert!(is_input(Events::new(&b)));
    let mut b = good.clone();
    b.key_offsets.pop();
    assert!(is_input(Events::new(&b)));
    let mut b = good.clone();
    b.inputs.push(3.0);
    assert!(is_input(Events::new(&b)));
    let mut b = good.clone();
    b.timestamps.pop();
    assert!(is_input(Events::new(&b)));
    let mut b = good.clone();
    b.keys[0] = 0xff;
    assert!(is_input(Events::new(&b)));
    let mut b = good.clone();
    b.input_dims = u32::MAX;
    b.len = u32::MAX;
    assert!(is_input(Events::new(&b)));
    // A key offset inside a multi-byte character.
    let mut b = events(&["ü", "x"], 1, vec![1.0, 2.0], None);
    b.key_offsets[1] = 1;
    assert!(is_input(Events::new(&b)));
    // Payload offsets that do not cover the payloads.
    let mut b = events(&["a"], 0, vec![], Some(&["{}"]));
    b.payload_offsets = vec![0, 1];
    assert!(is_input(Events::new(&b)));
}

#[test]
fn rows_check_their_shape() {
    let f = FeatureBatch {
        rows: 2,
        dims: 3,
        values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    };
    let rows = Rows::new(&f).unwrap();
    assert_eq!(
        rows.iter().collect::<Vec<_>>(),
        [&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]]
    );
    assert_eq!(rows.get(1), Some(&[4.0, 5.0, 6.0][..]));
    let bad = FeatureBatch {
        rows: 2,
        dims: 3,
        values: vec![1.0; 5],
    };
    assert!(is_input(Rows::new(&bad)));
}

fn windows() -> WindowBatch {
    WindowBatch {
        keys: b"u1u22".to_vec(),
        key_offsets: vec![0, 2, 5],
        starts: vec![0, 1000],
        ends: vec![1000, 2000],
        row_offsets: vec![0, 2, 2],
        dims: 2,
        values: vec![1.0, 2.0, 3.0, 4.0],
        closing: vec![false, true],
    }
}

#[test]
fn panes_carry_their_new_rows() {
    let w = windows();
    let panes = Panes::new(&w).unwrap();
    let all: Vec<_> = panes.iter().collect();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].key(), all[0].start(), all[0].end()),
        ("u1", 0, 1000)
    );
    assert_eq!(
        all[0].rows().collect::<Vec<_>>(),
        [&[1.0, 2.0], &[3.0, 4.0]]
    );
    assert!(!all[0].closing());
    assert_eq!(
        (all[1].key(), all[1].row_count(), all[1].closing()),
        ("u22", 0, true)
    );
    assert_eq!(all[1].rows().count(), 0);

    let mut bad = windows();
    bad.row_offsets = vec![0, 3, 2];
    assert!(is_input(Panes::new(&bad)));
    let mut bad = windows();
    bad.values.pop();
    assert!(is_input(Panes::new(&bad)));
    let mut bad = windows();
    bad.closing.pop();
    assert!(is_input(Panes::new(&bad)));

    let mut zero = windows();
    zero.dims = 0;
    zero.values.clear();
    let panes = Panes::new(&zero).unwrap();
    assert_eq!(
        panes.get(0).unwrap().rows().collect::<Vec<_>>(),
        [&[] as &[f64], &[]]
    );
}

#[test]
fn output_is_columnar_and_rectangular() {
    let mut out = Output::new();
    out.emit("a", 5, &[1.0, 2.0]).unwrap();
    out.emit("bc", 6, &[3.0, 4.0]).unwrap();
    assert!(matches!(out.emit("d", 7, &[1.0]), Err(Error::Internal(_))));
    assert_eq!(out.get(1), Some(Event::new("bc", 6, &[3.0, 4.0], None)));
    let b = out.finish();
    assert_eq!(b.len, 2);
    assert_eq!(b.keys, b"abc");
    assert_eq!(b.key_offsets, [0, 1, 3]);
    assert_eq!(b.timestamps, [5, 6]);
    assert_eq!(
        (b.input_dims, b.inputs.as_slice()),
        (2, &[1.0, 2.0, 3.0, 4.0][..])
    );
    assert_eq!(b.payload_offsets, [0, 0, 0]);
    // The result is itself a well-formed batch.
    assert_eq!(Events::new(&b).unwrap().len(), 2);

    let empty = Output::new().finish();
    assert_eq!((empty.len, empty.key_offsets.as_slice()), (0, &[0][..]));
    assert_eq!(Events::new(&empty).unwrap().len(), 0);
}

#[test]
fn extractor_rows_must_have_one_width() {
    let b = events(&["a", "b", "c"], 1, vec![1.0, 2.0, 3.0], None);
    let f = run_extractor(&b, |ev, out| {
        out.push(ev.inputs()[0] * 2.0);
        Ok(())
    })
    .unwrap();
    assert_eq!((f.rows, f.dims, f.values), (3, 1, vec![2.0, 4.0, 6.0]));

    let r = run_extractor(&b, |ev, out| {
        out.extend(std::iter::repeat_n(0.0, ev.ts() as usize - 999));
        Ok(())
    });
    assert!(matches!(r, Err(PluginError::InvalidInput(m)) if m.contains("event 1")));

    let r = run_extractor(&b, |ev, _| {
        if ev.key() == "b" {
            return Err(Error::input("no b"));
        }
        Ok(())
    });
    assert!(matches!(r, Err(PluginError::InvalidInput(m)) if m == "event 1: no b"));

    let empty = events(&[], 3, vec![], None);
    let f = run_extractor(&empty, |_, _| Ok(())).unwrap();
    assert_eq!((f.rows, f.dims, f.values.len()), (0, 0, 0));
}

/// Sums its inputs; `learn` adds the label to a bias.
struct Sum {
    bias: f64,
}

impl Model for Sum {
    type Config = ();
    fn new(_: ()) -> Result<Self> {
        Ok(Sum { bias: 0.0 })
    }
    fn predict(&self, row: &[f64]) -> Result<f64> {
        Ok(self.bias + row.iter().sum::<f64>())
    }
    fn learn(&mut self, _row: &[f64], label: f64) -> Result<()> {
        self.bias += label;
        Ok(())
    }
}

struct Fixed;

impl Model for Fixed {
    type Config = ();
    fn new(_: ()) -> Result<Self> {
        Ok(Fixed)
    }
    fn predict(&self, _row: &[f64]) -> Result<f64> {
        Ok(1.0)
    }
}

#[test]
fn train_is_prequential() {
    let f = FeatureBatch {
        rows: 3,
        dims: 1,
        values: vec![1.0, 1.0, 1.0],
    };
    let mut m = Sum::new(()).unwrap();
    assert_eq!(
        run_train(&mut m, &f, &[10.0, 20.0, 30.0]).unwrap(),
        [1.0, 11.0, 31.0]
    );
    assert_eq!(run_predict(&m, &f).unwrap(), [61.0, 61.0, 61.0]);
    assert!(is_input(run_train(&mut m, &f, &[1.0])));

    let mut fixed = Fixed;
    assert!(matches!(
        run_train(&mut fixed, &f, &[0.0; 3]),
        Err(PluginError::Unsupported(_))
    ));
    assert_eq!(fixed.snapshot().unwrap(), Vec::<u8>::new());
    assert!(matches!(fixed.restore(b"x"), Err(Error::Unsupported(_))));
}

/// Scores a batch at once: the row sums, but drops the last row when asked to.
struct Batched {
    drop_last: bool,
}

impl Model for Batched {
    type Config = ();
    fn new(_: ()) -> Result<Self> {
        Ok(Batched { drop_last: false })
    }
    fn predict(&self, _row: &[f64]) -> Result<f64> {
        Err(Error::internal("predict_batch is used instead"))
    }
    fn predict_batch(&self, rows: &Rows<'_>, out: &mut Vec<f64>) -> Result<()> {
        let keep = rows.len() - usize::from(self.drop_last);
        let sums = rows
            .values()
            .chunks_exact(rows.dims())
            .map(|r| r.iter().sum::<f64>());
        out.extend(sums.take(keep));
        Ok(())
    }
}

#[test]
fn predict_runs_the_batch_form_and_checks_its_count() {
    let f = FeatureBatch {
        rows: 2,
        dims: 2,
        values: vec![1.0, 2.0, 3.0, 4.0],
    };
    // The default batch form calls predict per row, with the row in a failure's message.
    let m = Sum::new(()).unwrap();
    assert_eq!(run_predict(&m, &f).unwrap(), [3.0, 7.0]);
    let r = run_predict(&Batched { drop_last: false }, &f);
    assert_eq!(r.unwrap(), [3.0, 7.0]);
    let r = run_predict(&Batched { drop_last: true }, &f);
    assert!(
        matches!(&r, Err(PluginError::Internal(m)) if m == "predict_batch gave 1 scores for 2 rows"),
        "{r:?}"
    );
}

#[test]
fn configs_parse_as_json_and_empty_means_empty_object() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct C {
        #[serde(default)]
        a: u32,
    }
    assert_eq!(parse_config::<C>("").unwrap(), C { a: 0 });
    assert_eq!(parse_config::<C>(r#"{"a": 3}"#).unwrap(), C { a: 3 });
    assert!(matches!(
        parse_config::<C>("{"),
        Err(PluginError::InvalidConfig(_))
    ));
    assert!(matches!(not_initialised(), PluginError::Internal(m) if m.contains("init")));
}

#[test]
fn errors_convert_into_the_wit_variant() {
    let e: PluginError = Error::config("c").into();
    assert!(matches!(e, PluginError::InvalidConfig(m) if m == "c"));
    let e: PluginError = Error::unsupported("u").into();
    assert!(matches!(e, PluginError::Unsupported(m) if m == "u"));
    let json: Error = serde_json::from_str::<u32>("x").unwrap_err().into();
    assert!(matches!(json, Error::InvalidConfig(_)));
    assert_eq!(Error::from("boom"), Error::internal("boom"));
    assert_eq!(
        Error::from(String::from("boom")),
        Error::Internal("boom".into())
    );
}

#[test]
fn f64_state_encoding_round_trips() {
    let v = [0.0, -1.5, f64::NEG_INFINITY, 1e300];
    let mut w = state::Writes::with_capacity(3, 24);
    w.set_f64s(&v);
    w.remove();
    w.set(b"ab");
    assert_eq!(w.len(), 3);
    let read = w.as_read();
    assert_eq!(read.len(), 3);
    assert_eq!(read.get(0), Some(&state::encode_f64s(&v)[..]));
    assert_eq!(
        (read.get(1), read.get(2), read.get(3)),
        (None, Some(&b"ab"[..]), None)
    );
    let bytes = state::encode_f64s(&v);
    assert_eq!(bytes.len(), 32);
    assert_eq!(&bytes[8..16], &(-1.5f64).to_le_bytes());
    assert_eq!(state::decode_f64s(&bytes).unwrap(), v);
    assert_eq!(state::decode_f64s(&bytes[..7]), None);
}
