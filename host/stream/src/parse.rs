//! Record parsing: a single pass over a record's JSON that pulls out the key, the event
//! time, the numeric inputs (appended straight to the batch's input column) and the optional
//! label and id, and skips every other field without building anything. Keys and ids borrow
//! from the payload unless they need unescaping. It accepts exactly JSON (RFC 8259): a
//! malformed record is an error that names the byte where it went wrong, and goes to the
//! dead letters.
//!
//! Written by hand because it is the hot path's first step: measured with callgrind on the
//! shared workload it costs about a fifth of the instructions serde_json's deserializer did
//! (and std's float parsing, which rounds correctly, reads the numbers).

use std::borrow::Cow;

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
pub struct ParsedRecord<'a> {
    /// Record key.
    pub key: Cow<'a, str>,
    /// Event time.
    pub ts: i64,
    /// The label, when the parser has a label field and the record has it.
    pub label: Option<f64>,
    /// The id, when the parser has an id field and the record has it.
    pub id: Option<Cow<'a, str>>,
    /// A label record (key, id and label, no inputs): it carries no event.
    pub label_only: bool,
}

/// Deepest nesting skipped inside a record.
const MAX_DEPTH: usize = 128;

enum Field {
    Key,
    Time,
    Inputs,
    Label,
    Id,
    Other,
}

impl RecordParser {
    /// Parses `payload`, appending its inputs to `inputs`. On error nothing is appended
    /// and the message says why (it goes to the dead-letter output).
    pub fn parse<'a>(
        &self,
        payload: &'a [u8],
        inputs: &mut Vec<f64>,
    ) -> Result<ParsedRecord<'a>, String> {
        let mark = inputs.len();
        let r = self.scan(payload, inputs);
        if r.is_err() {
            inputs.truncate(mark);
        }
        r
    }

    fn field(&self, name: &[u8]) -> Field {
        let is = |field: &str| same(name, field.as_bytes());
        if is(&self.key_field) {
            Field::Key
        } else if is(&self.time_field) {
            Field::Time
        } else if is(&self.inputs_field) {
            Field::Inputs
        } else if self.label_field.as_deref().is_some_and(is) {
            Field::Label
        } else if self.id_field.as_deref().is_some_and(is) {
            Field::Id
        } else {
            Field::Other
        }
    }

    fn scan<'a>(&self, b: &'a [u8], inputs: &mut Vec<f64>) -> Result<ParsedRecord<'a>, String> {
        let mut c = Cursor { b, i: 0 };
        let (mut key, mut ts, mut label, mut id) = (None, None, None, None);
        let mut got_inputs = false;
        c.ws();
        c.expect(b'{')?;
        c.ws();
        if c.peek() == Some(b'}') {
            c.i += 1;
        } else {
            loop {
                c.ws();
                let name = c.name()?;
                c.ws();
                c.expect(b':')?;
                c.ws();
                match self.field(&name) {
                    Field::Key => key = Some(c.key()?),
                    Field::Id => id = Some(c.key()?),
                    Field::Time => {
                        ts = Some(c.integer().map_err(|e| {
                            if e.is_empty() {
                                format!("`{}` must be an integer (ms)", self.time_field)
                            } else {
                                e
                            }
                        })?)
                    }
                    Field::Inputs => {
                        if got_inputs {
                            return Err(format!("malformed record: `{}` twice", self.inputs_field));
                        }
                        let n = c.numbers(inputs)?;
                        if n != self.dims {
                            return Err(format!(
                                "`{}` has {n} values, expected {}",
                                self.inputs_field, self.dims
                            ));
                        }
                        got_inputs = true;
                    }
                    Field::Label => label = c.label(self.label_field.as_deref().unwrap_or(""))?,
                    Field::Other => c.skip()?,
                }
                c.ws();
                match c.next() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => return Err(c.error("expected `,` or `}` after a field")),
                }
            }
        }
        c.ws();
        if c.i != b.len() {
            return Err(c.error("trailing characters after the record"));
        }
        match (key, ts, got_inputs) {
            (Some(key), Some(ts), true) => Ok(ParsedRecord {
                key,
                ts,
                label,
                id,
                label_only: false,
            }),
            (Some(key), ts, false)
                if self.id_field.is_some() && label.is_some() && id.is_some() =>
            {
                Ok(ParsedRecord {
                    key,
                    ts: ts.unwrap_or(0),
                    label,
                    id,
                    label_only: true,
                })
            }
            (key, ts, got) => {
                let missing = [
                    (key.is_none(), &self.key_field),
                    (ts.is_none(), &self.time_field),
                    (!got, &self.inputs_field),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
                Err(format!("missing field {missing}"))
            }
        }
    }
}

/// Byte-wise equality, in line: field names and event keys are a few bytes long, where a
/// call to `memcmp` costs more than the comparison (it was 5% of the engine's time).
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// Folds the decimal digits of `b` from `i` into `mantissa` while it has fewer than 19
/// significant ones (`digits`; leading zeros do not count), clearing `exact` for any
/// dropped. Returns where the digits end and how many went into `mantissa`.
#[inline(always)]
fn fold_digits(
    b: &[u8],
    mut i: usize,
    mantissa: &mut u64,
    digits: &mut u32,
    exact: &mut bool,
) -> (usize, i32) {
    let mut kept = 0;
    while let Some(&d) = b.get(i) {
        let v = d.wrapping_sub(b'0');
        if v > 9 {
            break;
        }
        if *digits < 19 {
            *mantissa = *mantissa * 10 + u64::from(v);
            *digits += u32::from(*mantissa != 0);
            kept += 1;
        } else {
            *exact = false;
        }
        i += 1;
    }
    (i, kept)
}

/// A string scanned by [`Cursor::plain`].
enum Plain<'a> {
    /// Its bytes, with no escapes, and whether they are all ASCII.
    Bytes(&'a [u8], bool),
    /// It has escapes; the content starts at this offset.
    Escaped(usize),
}

/// A scanned JSON number.
struct Number {
    start: usize,
    end: usize,
    /// No fraction and no exponent.
    integer: bool,
    negative: bool,
    /// Its significant digits (at most 19), as an integer…
    mantissa: u64,
    /// …times ten to this power.
    exp10: i32,
    /// False when digits were dropped (the fast paths do not apply).
    exact: bool,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        format!(
            "malformed record: {what} at byte {}",
            self.i.min(self.b.len())
        )
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", c as char)))
        }
    }

    /// A string: borrowed when it has no escapes, unescaped otherwise.
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        match self.plain()? {
            Plain::Bytes(s, _) => std::str::from_utf8(s)
                .map(Cow::Borrowed)
                .map_err(|_| self.not_utf8()),
            Plain::Escaped(start) => self.escaped(start).map(Cow::Owned),
        }
    }

    /// A member name, as bytes: it is only compared with the configured field names, so
    /// an ASCII name (the usual case) needs no UTF-8 validation.
    fn name(&mut self) -> Result<Cow<'a, [u8]>, String> {
        match self.plain()? {
            Plain::Bytes(s, ascii) => {
                if !ascii && std::str::from_utf8(s).is_err() {
                    return Err(self.not_utf8());
                }
                Ok(Cow::Borrowed(s))
            }
            Plain::Escaped(start) => self.escaped(start).map(|s| Cow::Owned(s.into_bytes())),
        }
    }

    /// The error for a string just scanned (the cursor past its closing quote) that is not
    /// UTF-8; it points at the closing quote.
    fn not_utf8(&self) -> String {
        format!(
            "malformed record: a string that is not UTF-8 at byte {}",
            (self.i - 1).min(self.b.len())
        )
    }

    /// Scans a string up to its closing quote (then just past it) or its first escape
    /// (then at the backslash).
    #[inline]
    fn plain(&mut self) -> Result<Plain<'a>, String> {
        self.expect(b'"')?;
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let mut high = 0u8;
        while let Some(&c) = b.get(i) {
            match c {
                b'"' => {
                    self.i = i + 1;
                    return Ok(Plain::Bytes(&b[start..i], high < 0x80));
                }
                b'\\' => {
                    self.i = i;
                    return Ok(Plain::Escaped(start));
                }
                0..0x20 => {
                    self.i = i;
                    return Err(self.error("a control character in a string"));
                }
                _ => {
                    high |= c;
                    i += 1;
                }
            }
        }
        self.i = i;
        Err(self.error("an unterminated string"))
    }

    /// The rest of a string with escapes, from `start` (just after the opening quote).
    fn escaped(&mut self, start: usize) -> Result<String, String> {
        let mut out: Vec<u8> = self.b[start..self.i].to_vec();
        loop {
            match self.next() {
                Some(b'"') => {
                    return String::from_utf8(out)
                        .map_err(|_| self.error("a string that is not UTF-8"));
                }
                Some(b'\\') => {
                    let c = self
                        .next()
                        .ok_or_else(|| self.error("an unterminated string"))?;
                    match c {
                        b'"' | b'\\' | b'/' => out.push(c),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code) {
                                if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                                    return Err(self.error("a lone surrogate in a string"));
                                }
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.error("a lone surrogate in a string"));
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            let ch = char::from_u32(code)
                                .ok_or_else(|| self.error("a lone surrogate in a string"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.error("an unknown escape in a string")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.error("a control character in a string")),
                Some(c) => out.push(c),
                None => return Err(self.error("an unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .next()
                .and_then(|c| (c as char).to_digit(16))
                .ok_or_else(|| self.error("a bad \\u escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// A key or id: a string, or an integer written as its digits.
    fn key(&mut self) -> Result<Cow<'a, str>, String> {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.integer()
                    .map_err(|_| self.error("a key that is neither a string nor an integer"))?;
                let digits = std::str::from_utf8(&self.b[start..self.i]).unwrap_or_default();
                Ok(Cow::Borrowed(digits))
            }
            _ => Err(self.error("a key that is neither a string nor an integer")),
        }
    }

    /// A JSON number from here: its extent, and its decimal digits when they fit.
    ///
    /// The hot loop of record parsing (eight to a record in the workload): it runs on a
    /// local index and returns the cursor's position only at the end or at an error.
    fn number(&mut self) -> Result<Number, String> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        let mut mantissa = 0u64;
        // Significant digits in `mantissa` (leading zeros of a fraction do not count). Up
        // to 19 fit a u64; more only matter to the slow path.
        let mut digits = 0u32;
        let mut exp10 = 0i32;
        let mut exact = true;
        let malformed = |c: &mut Self, at: usize| {
            c.i = at;
            Err(c.error("a malformed number"))
        };
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                (i, _) = fold_digits(b, i, &mut mantissa, &mut digits, &mut exact);
            }
            _ => return malformed(self, i),
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            integer = false;
            i += 1;
            let first = i;
            let kept;
            (i, kept) = fold_digits(b, i, &mut mantissa, &mut digits, &mut exact);
            exp10 -= kept;
            if i == first {
                return malformed(self, i);
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            integer = false;
            i += 1;
            let sign = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    -1
                }
                Some(b'+') => {
                    i += 1;
                    1
                }
                _ => 1,
            };
            let first = i;
            let mut e = 0i32;
            while let Some(&d) = b.get(i) {
                let v = d.wrapping_sub(b'0');
                if v > 9 {
                    break;
                }
                e = e.saturating_mul(10).saturating_add(i32::from(v));
                i += 1;
            }
            if i == first {
                return malformed(self, i);
            }
            exp10 = exp10.saturating_add(sign * e);
        }
        self.i = i;
        Ok(Number {
            start,
            end: i,
            integer,
            negative,
            mantissa,
            exp10,
            exact,
        })
    }

    /// An integer that fits an i64. An empty error means "a number, but not an integer".
    fn integer(&mut self) -> Result<i64, String> {
        let n = self.number()?;
        if !n.integer {
            return Err(String::new());
        }
        if n.exact && n.mantissa <= i64::MAX as u64 {
            let m = n.mantissa as i64;
            return Ok(if n.negative { -m } else { m });
        }
        std::str::from_utf8(&self.b[n.start..n.end])
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| self.error("an integer out of range"))
    }

    fn float(&mut self) -> Result<f64, String> {
        let n = self.number()?;
        // Clinger's fast path: a mantissa below 2^53 and a power of ten below 10^23 are
        // both exact doubles, so one multiplication or division rounds correctly.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        if n.exact && n.mantissa < (1 << 53) && (-22..=22).contains(&n.exp10) {
            let m = n.mantissa as f64;
            let x = if n.exp10 < 0 {
                m / POW10[n.exp10.unsigned_abs() as usize]
            } else {
                m * POW10[n.exp10 as usize]
            };
            return Ok(if n.negative { -x } else { x });
        }
        std::str::from_utf8(&self.b[n.start..n.end])
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.error("a number out of range"))
    }

    /// An array of numbers, appended to `out`; returns how many.
    fn numbers(&mut self, out: &mut Vec<f64>) -> Result<usize, String> {
        self.expect(b'[')?;
        self.ws();
        let mut n = 0;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(0);
        }
        loop {
            self.ws();
            out.push(self.float()?);
            n += 1;
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => return Ok(n),
                _ => return Err(self.error("expected `,` or `]` in the inputs")),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), String> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("an unknown literal"))
        }
    }

    /// A label: a number, `true`/`false` (1/0), or `null` (none).
    fn label(&mut self, field: &str) -> Result<Option<f64>, String> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| Some(1.0)),
            Some(b'f') => self.literal(b"false").map(|()| Some(0.0)),
            Some(b'n') => self.literal(b"null").map(|()| None),
            Some(b'-' | b'0'..=b'9') => self.float().map(Some),
            _ => Err(format!("`{field}` must be a number or a boolean")),
        }
    }

    /// Skips any JSON value (objects and arrays without recursion, to a bounded depth).
    fn skip(&mut self) -> Result<(), String> {
        // Which open containers are objects, innermost last.
        let mut objects = [false; MAX_DEPTH];
        let mut depth = 0usize;
        loop {
            self.ws();
            let mut open = None;
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        open = Some(true);
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open = Some(false);
                    }
                }
                Some(b'"') => {
                    self.name()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => {
                    self.number()?;
                }
            }
            if let Some(is_object) = open {
                if depth == MAX_DEPTH {
                    return Err(self.error("nesting too deep"));
                }
                objects[depth] = is_object;
                depth += 1;
                if is_object {
                    self.member_name()?;
                }
                continue;
            }
            // After a value: close containers, or go on to the next element or member.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.ws();
                let is_object = objects[depth - 1];
                match self.next() {
                    Some(b',') => {
                        if is_object {
                            self.member_name()?;
                        }
                        break;
                    }
                    Some(b'}') if is_object => depth -= 1,
                    Some(b']') if !is_object => depth -= 1,
                    _ => return Err(self.error("expected `,` or a closing bracket")),
                }
            }
        }
    }

    /// A member's `"name":` inside an object being skipped.
    fn member_name(&mut self) -> Result<(), String> {
        self.ws();
        self.name()?;
        self.ws();
        self.expect(b':')
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

    /// Found by `scripts/fuzz` (target `record`, 2026-12-01): a number too large for an
    /// f64 in a field weir skips is valid JSON (RFC 8259 sets no range) and is accepted,
    /// though serde_json's `Value` refuses it; where weir reads the number, a value that is
    /// not finite is an error.
    #[test]
    fn out_of_range_numbers_are_json_but_not_inputs() {
        let p = parser();
        let mut inputs = Vec::new();
        let ok = br#"{"key":"k1","ts":160000,"xts":1000e90000,"x":[1.5,-2]}"#;
        assert!(p.parse(ok, &mut inputs).is_ok());
        assert_eq!(inputs, [1.5, -2.0]);
        let bad = br#"{"key":"k1","ts":160000,"x":[1e999,-2]}"#;
        assert!(p.parse(bad, &mut inputs).is_err());
        assert_eq!(inputs.len(), 2, "nothing appended");
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
                key: Cow::Borrowed("u1"),
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

#[cfg(test)]
mod scanner {
    use super::*;

    fn p() -> RecordParser {
        RecordParser {
            key_field: "key".into(),
            time_field: "ts".into(),
            inputs_field: "x".into(),
            dims: 2,
            label_field: Some("label".into()),
            id_field: None,
        }
    }

    #[test]
    fn skips_any_json_and_unescapes_keys() {
        let mut inputs = Vec::new();
        let r = p()
            .parse(
                br#" { "meta" : {"a":[1,{"b":[[],{}]},"x\"y",true,false,null,-1.5e-3]},
                   "key":"u\u00e9\n\"q\"" , "ts":-7, "x":[ 1e2 ,-0.25 ], "e":{}, "f":[] } "#,
                &mut inputs,
            )
            .unwrap();
        assert_eq!(r.key, "u\u{e9}\n\"q\"");
        assert!(matches!(r.key, Cow::Owned(_)));
        assert_eq!((r.ts, r.label), (-7, None));
        assert_eq!(inputs, [100.0, -0.25]);
        let r = p()
            .parse(
                br#"{"key":"plain","ts":1,"x":[0,1],"label":null}"#,
                &mut inputs,
            )
            .unwrap();
        assert!(matches!(r.key, Cow::Borrowed("plain")));
        let r = p()
            .parse(br#"{"key":"\ud83d\ude00","ts":1,"x":[0,1]}"#, &mut inputs)
            .unwrap();
        assert_eq!(r.key, "\u{1F600}");
    }

    #[test]
    fn floats_round_like_std() {
        let mut inputs = Vec::new();
        p().parse(
            br#"{"key":"a","ts":1,"x":[0.1000000000000000055511151231257827, 2.2250738585072014e-308]}"#,
            &mut inputs,
        )
        .unwrap();
        assert_eq!(inputs, [0.1, 2.2250738585072014e-308]);
    }

    #[test]
    fn refuses_what_json_refuses() {
        let mut inputs = vec![];
        for bad in [
            &br#"{"key":"a","ts":1,"x":[1,2],}"#[..],
            br#"{"key":"a","ts":1,"x":[1,2]} x"#,
            br#"{"key":"a","ts":01,"x":[1,2]}"#,
            br#"{"key":"a","ts":1,"x":[1.,2]}"#,
            br#"{"key":"a","ts":1,"x":[1,2],"z":[1,}"#,
            br#"{"key":"a","ts":1,"x":[1,2],"z":{"a" 1}}"#,
            br#"{"key":"a","ts":1,"x":[1,2],"z":{"a":1]}"#,
            br#"{"key":"a\q","ts":1,"x":[1,2]}"#,
            br#"{"key":"a","ts":1,"x":[1,2],"z":"\ud800"}"#,
            br#"{"key":"a","ts":1,"x":[1,NaN]}"#,
            br#"{"key":"a","ts":1,"x":[1,1e999]}"#,
            br#"{"key":"a","ts":99999999999999999999,"x":[1,2]}"#,
            br#"{"key":"a","ts":1,"x":[1,2],"x":[3,4]}"#,
            b"{\"key\":\"a\x01\",\"ts\":1,\"x\":[1,2]}",
            b"{\"key\":\"\xff\",\"ts\":1,\"x\":[1,2]}",
            br#"{"key":"a","ts":1,"x":[1,2]"#,
            b"",
        ] {
            let e = p().parse(bad, &mut inputs).unwrap_err();
            assert!(
                e.starts_with("malformed record"),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!(
            "{{\"z\":{}1{},\"key\":\"a\",\"ts\":1,\"x\":[1,2]}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(
            p().parse(deep.as_bytes(), &mut inputs)
                .unwrap_err()
                .contains("too deep")
        );
        assert!(inputs.is_empty());
    }
}

#[cfg(test)]
mod numbers {
    use super::*;

    fn one(text: &str) -> Result<f64, String> {
        let b = text.as_bytes();
        Cursor { b, i: 0 }.float()
    }

    /// The fast path agrees with std's correctly rounded parse, bit for bit.
    #[test]
    fn fast_floats_equal_std() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 17) as usize + 1;
            let frac = (x >> 20) as usize % (digits + 1);
            let mut s: String = (x >> 8).to_string().chars().take(digits).collect();
            if frac > 0 && frac < s.len() {
                s.insert(s.len() - frac, '.');
            }
            for t in [
                s.clone(),
                format!("-{s}"),
                format!("{s}e{}", (x >> 40) % 30),
                format!("{s}E-{}", (x >> 45) % 30),
            ] {
                let want: f64 = t.parse().unwrap();
                assert_eq!(one(&t).unwrap().to_bits(), want.to_bits(), "{t}");
            }
        }
        for t in [
            "0",
            "-0",
            "0.0",
            "123456789012345678901234567890",
            "1e308",
            "4.9e-324",
            "0.3",
            "9007199254740993",
        ] {
            let want: f64 = t.parse().unwrap();
            assert_eq!(one(t).unwrap().to_bits(), want.to_bits(), "{t}");
        }
    }
}
