//! Compile-time behaviour of the attribute macros: good plugins compile; wrong signatures
//! are rejected with a clear, spanned message (see the `.stderr` files).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
