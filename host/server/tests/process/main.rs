//! Tests that run the real `weir` binary as child processes: the embedded broker as its
//! own process (`weir broker`), and durable workers (`weir run`) killed with SIGKILL and
//! restarted, against MariaDB and SQLite.

mod crash;
mod support;
