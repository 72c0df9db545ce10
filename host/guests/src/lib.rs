//! Paths of weir's guest components, built from source by this crate's build script:
//! [`plugins`] (the example plugins) and [`fixtures`] (hostile and odd plugins for tests).

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Reads a guest component built by this crate.
pub fn read(path: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}
