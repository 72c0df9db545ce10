//! The input record parser on any bytes: a record or an error, never a panic; on an error
//! nothing is appended to the batch; whatever it accepts is JSON (it claims RFC 8259
//! exactly), with exactly `dims` inputs.
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
            assert!(
                serde_json::from_slice::<serde_json::Value>(data).is_ok(),
                "accepted a record that is not JSON: {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
});
