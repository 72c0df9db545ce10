//! Plugin validation, the first thing an upload meets: any bytes are a component weir can
//! describe or a `ValidationError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = weir_engine::inspect(data, &weir_engine::Grants { clocks: true }) {
        let _ = info.kind.as_str();
    }
});
