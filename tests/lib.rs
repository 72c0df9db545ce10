//! weir's integration tests live in `all/` (one binary, `cargo test -p weir-tests`). This
//! library is empty; it exists so the package has a primary target.
