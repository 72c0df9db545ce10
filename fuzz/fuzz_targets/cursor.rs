//! The result cursor decoder, which takes whatever a client sends in `?cursor=` or
//! `Last-Event-ID`: never a panic, and nothing but a cursor this server signed for this
//! tenant and pipeline opens (a forgery would need the HMAC key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_server::api::auth::{CursorBody, CursorSigner};

fuzz_target!(|data: &[u8]| {
    let signer = CursorSigner::new(b"fuzzing secret");
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in ["predictions", "windows", "stream"] {
        if let Ok(body) = signer.open(text, 1, 2, kind) {
            // Only possible for an input the signer produced: then it is exactly that.
            assert_eq!(signer.sign(&body), text, "opened a cursor it did not sign");
        }
    }
    // Whatever the bytes, as a key a cursor round-trips.
    let body = CursorBody {
        t: 1,
        p: 2,
        k: "windows".into(),
        po: None,
        kw: Some((text.to_owned(), data.len() as i64)),
        pos: None,
    };
    assert_eq!(signer.open(&signer.sign(&body), 1, 2, "windows").ok(), Some(body));
});
