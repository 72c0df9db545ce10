//! The pipeline spec parser, as a tenant's `POST /v1/pipelines` reaches it: any text is a
//! spec or a clear error, never a panic, within the server's default bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_stream::spec::{PipelineSpec, SpecBounds};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = PipelineSpec::parse_bounded(text, &SpecBounds::default()) {
        // An accepted spec parses again the same way without bounds (how a stored spec is
        // read back).
        assert!(PipelineSpec::parse(text).is_ok(), "accepted once, refused after");
        let _ = spec.name.get_ref();
    }
});
