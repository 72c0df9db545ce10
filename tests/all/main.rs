//! One integration-test binary for the whole workspace (wasmtime's `tests/all` layout):
//! each extra test binary costs link time on a 2-core machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod common;
mod edges;
mod hardening;
mod hostile;
mod pipeline;
mod plugins;
mod store;
mod swap;
mod tenants;
mod training;
