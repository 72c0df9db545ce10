//! Fast JSON record parsing: pulls the key, the event time and the numeric inputs out of a
//! record without building a DOM; every other field is skipped (and kept in the raw payload).

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Field names to read.
#[derive(Debug, Clone)]
pub struct RecordParser {
    /// Key field.
    pub key_field: String,
    /// Event-time field (integer ms).
    pub time_field: String,
    /// Numeric inputs field (array of numbers).
    pub inputs_field: String,
    /// Expected number of inputs.
    pub dims: usize,
    /// Optional label field (a number, or `true`/`false`); a record without it is unlabelled.
    pub label_field: Option<String>,
    /// Optional id field (a string or an integer). With it, a record with the key, the id
    /// and the label but no inputs is a *label record* for an earlier event.
    pub id_field: Option<String>,
}

/// The parts of a record the pipeline needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRecord {
    /// Record key.
    pub key: String,
    /// Event time.
    pub ts: i64,
    /// The label, when the parser has a label field and the record has it.
    pub label: Option<f64>,
    /// The id, when the parser has an id field and the record has it.
    pub id: Option<String>,
    /// A label record (key, id and label, no inputs): it carries no event.
    pub label_only: bool,
}

impl RecordParser {
    /// Parses `payload`, appending its inputs to `inputs`. On error nothing is appended
    /// and the message says why (it goes to the dead-letter output).
    pub fn parse(&self, payload: &[u8], inputs: &mut Vec<f64>) -> Result<ParsedRecord, String> {
        let mark = inputs.len();
        let mut de = serde_json::Deserializer::from_slice(payload);
        let seed = Seed { p: self, inputs };
        let r = seed.deserialize(&mut de).and_then(|r| de.end().map(|_| r));
        match r {
            Ok(Fields {
                key: Some(key),
                ts: Some(ts),
                got_inputs: true,
                label,
                id,
            }) => Ok(ParsedRecord {
                key,
                ts,
                label,
                id,
                label_only: false,
            }),
            Ok(Fields {
                key: Some(key),
                ts,
                got_inputs: false,
                label: Some(label),
                id: Some(id),
            }) if self.id_field.is_some() => Ok(ParsedRecord {
                key,
                ts: ts.unwrap_or(0),
                label: Some(label),
                id: Some(id),
                label_only: true,
            }),
            Ok(f) => {
                inputs.truncate(mark);
                let missing = [
                    (f.key.is_none(), &self.key_field),
                    (f.ts.is_none(), &self.time_field),
                    (!f.got_inputs, &self.inputs_field),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
                Err(format!("missing field {missing}"))
            }
            Err(e) => {
                inputs.truncate(mark);
                Err(format!("malformed record: {e}"))
            }
        }
    }
}

struct Fields {
    key: Option<String>,
    ts: Option<i64>,
    got_inputs: bool,
    label: Option<f64>,
    id: Option<String>,
}

struct Seed<'a> {
    p: &'a RecordParser,
    inputs: &'a mut Vec<f64>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Fields;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Fields;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        use serde::de::Error;
        let mut out = Fields {
            key: None,
            ts: None,
            got_inputs: false,
            label: None,
            id: None,
        };
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if name == self.p.key_field {
                out.key = Some(map.next_value::<KeyValue>()?.0);
            } else if name == self.p.time_field {
                let v: serde_json::Number = map.next_value()?;
                out.ts = Some(v.as_i64().ok_or_else(|| {
                    A::Error::custom(format!("`{}` must be an integer (ms)", self.p.time_field))
                })?);
            } else if name == self.p.inputs_field {
                let n = map.next_value_seed(Numbers { out: self.inputs })?;
                if n != self.p.dims {
                    return Err(A::Error::custom(format!(
                        "`{}` has {n} values, expected {}",
                        self.p.inputs_field, self.p.dims
                    )));
                }
                out.got_inputs = true;
            } else if self.p.id_field.as_deref() == Some(&*name) {
                out.id = Some(map.next_value::<KeyValue>()?.0);
            } else if self.p.label_field.as_deref() == Some(&*name) {
                out.label = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
                    serde_json::Value::Null => None,
                    _ => {
                        return Err(A::Error::custom(format!(
                            "`{}` must be a number or a boolean",
                            self.p.label_field.as_deref().unwrap_or_default()
                        )));
                    }
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct KeyValue(String);

impl<'de> serde::Deserialize<'de> for KeyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyValue, E> {
                Ok(KeyValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KeyValue, E> {
                Ok(KeyValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KeyValue, E> {
                Ok(KeyValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

struct Numbers<'a> {
    out: &'a mut Vec<f64>,
}

impl<'de> DeserializeSeed<'de> for Numbers<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Numbers<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(v) = seq.next_element::<f64>()? {
            self.out.push(v);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> RecordParser {
        RecordParser {
            key_field: "key".into(),
            time_field: "ts".into(),
            inputs_field: "x".into(),
            dims: 2,
            label_field: None,
            id_field: None,
        }
    }

    #[test]
    fn parses_and_keeps_going_past_unknown_fields() {
        let mut inputs = Vec::new();
        let r = parser().parse(
            br#"{"extra":{"a":[1,2]},"key":"u1","ts":5,"x":[1.5,-2],"label":1}"#,
            &mut inputs,
        );
        assert_eq!(
            r,
            Ok(ParsedRecord {
                key: "u1".into(),
                ts: 5,
                label: None,
                id: None,
                label_only: false,
            })
        );
        let labelled = RecordParser {
            label_field: Some("label".into()),
            ..parser()
        };
        let r = labelled.parse(br#"{"key":"u1","ts":5,"x":[1,2],"label":1}"#, &mut inputs);
        assert_eq!(r.map(|r| r.label), Ok(Some(1.0)));
        let r = labelled.parse(
            br#"{"key":"u1","ts":5,"x":[1,2],"label":false}"#,
            &mut inputs,
        );
        assert_eq!(r.map(|r| r.label), Ok(Some(0.0)));
        let r = labelled.parse(br#"{"key":"u1","ts":5,"x":[1,2]}"#, &mut inputs);
        assert_eq!(r.map(|r| r.label), Ok(None));
        let r = labelled.parse(
            br#"{"key":"u1","ts":5,"x":[1,2],"label":"yes"}"#,
            &mut inputs,
        );
        assert!(r.is_err());
        assert_eq!(inputs[..2], [1.5, -2.0]);
        assert_eq!(
            inputs.len(),
            8,
            "three labelled records appended, the bad one did not"
        );
        let r = parser().parse(br#"{"key":7,"ts":5,"x":[1,2]}"#, &mut inputs);
        assert_eq!(r.unwrap().key, "7");
    }

    #[test]
    fn label_records_need_an_id_field() {
        let mut inputs = Vec::new();
        let later = RecordParser {
            label_field: Some("label".into()),
            id_field: Some("id".into()),
            ..parser()
        };
        let r = later
            .parse(br#"{"key":"u1","id":"e7","label":1}"#, &mut inputs)
            .unwrap();
        assert!(r.label_only);
        assert_eq!((r.id.as_deref(), r.label), (Some("e7"), Some(1.0)));
        let r = later
            .parse(br#"{"key":"u1","id":42,"ts":3,"x":[1,2]}"#, &mut inputs)
            .unwrap();
        assert!(!r.label_only);
        assert_eq!(r.id.as_deref(), Some("42"));
        // Without a label it is an incomplete event, not a label record.
        assert!(
            later
                .parse(br#"{"key":"u1","id":"e7"}"#, &mut inputs)
                .is_err()
        );
        // Without an id field configured, a label record is an incomplete event.
        let plain = RecordParser {
            label_field: Some("label".into()),
            ..parser()
        };
        assert!(
            plain
                .parse(br#"{"key":"u1","id":"e7","label":1}"#, &mut inputs)
                .is_err()
        );
        assert_eq!(inputs, [1.0, 2.0]);
    }

    #[test]
    fn clear_errors_and_nothing_half_appended() {
        let p = parser();
        let mut inputs = vec![9.0];
        let e = p.parse(br#"{"ts":5,"x":[1,2]}"#, &mut inputs).unwrap_err();
        assert_eq!(e, "missing field `key`");
        let e = p
            .parse(br#"{"key":"a","x":[1,2]}"#, &mut inputs)
            .unwrap_err();
        assert_eq!(e, "missing field `ts`");
        let e = p
            .parse(br#"{"key":"a","ts":1,"x":[1,2,3]}"#, &mut inputs)
            .unwrap_err();
        assert!(e.contains("has 3 values, expected 2"), "{e}");
        let e = p
            .parse(br#"{"key":"a","ts":1.5,"x":[1,2]}"#, &mut inputs)
            .unwrap_err();
        assert!(e.contains("must be an integer"), "{e}");
        let e = p.parse(b"not json", &mut inputs).unwrap_err();
        assert!(e.starts_with("malformed record"), "{e}");
        let e = p
            .parse(br#"{"key":"a","ts":1,"x":[1,"b"]}"#, &mut inputs)
            .unwrap_err();
        assert!(e.starts_with("malformed record"), "{e}");
        assert_eq!(inputs, vec![9.0]);
    }
}
