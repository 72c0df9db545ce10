//! Tests that run the real `weir` binary as child processes: the embedded broker as its
//! own process (`weir broker`), and durable workers (`weir run`) killed with SIGKILL and
//! restarted, against MariaDB and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod crash;
mod gaps;
mod support;
