//! The input record parser on any bytes: a record or an error, never a panic; on an error
//! nothing is appended to the batch; whatever it accepts is JSON (it claims RFC 8259
//! exactly), with exactly `dims` inputs. (The first 10-minute run found that it accepts
//! numbers too large for an f64 in fields it skips, which serde_json's `Value` refuses:
//! valid JSON, so the oracle is now JSON's grammar; see `out_of_range_numbers_are_json_but_not_inputs`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_stream::parse::RecordParser;

fuzz_target!(|data: &[u8]| {
    let parser = RecordParser {
        key_field: "key".into(),
        time_field: "ts".into(),
        inputs_field: "x".into(),
        dims: 3,
        label_field: Some("label".into()),
        id_field: Some("id".into()),
    };
    let mut inputs = vec![7.0];
    match parser.parse(data, &mut inputs) {
        Err(_) => assert_eq!(inputs, [7.0], "a refused record appended inputs"),
        Ok(r) => {
            let added = inputs.len() - 1;
            assert!(
                added == 3 || (r.label_only && added == 0),
                "{added} inputs appended"
            );
            // JSON's grammar, without serde_json's range checks on numbers it would
            // build (RFC 8259 sets no range; weir skips numbers it does not read).
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
                "accepted a record that is not JSON: {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
});
