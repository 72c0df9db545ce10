//! Child processes, databases and inputs for the process tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use weir_store::Store;
use weir_worker::kafka::Producer;
use weir_workload::{Generator, to_json_line};

/// The `weir` binary under test.
pub fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env("RUST_LOG", "weir=info,warn");
    c
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weir broker` as its own process, with the given topics; returns it and its address.
pub fn start_broker(topics: &[&str]) -> (Proc, String) {
    let mut cmd = weir();
    cmd.arg("broker");
    for t in topics {
        cmd.args(["--topic", t]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning weir broker");
    let stdout = child.stdout.take().expect("broker stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the broker's address");
    let addr = line.trim().to_string();
    assert!(addr.contains(':'), "weir broker printed `{addr}`");
    (Proc(child), addr)
}

/// Produces the first `n` events of the shared workload (seed 42) to `topic`, keyed.
pub fn produce_workload(bootstrap: &str, topic: &str, skip: u64, n: u64) {
    let mut p = Producer::new(bootstrap).expect("producer");
    for e in Generator::new(skip + n, 42).skip(skip as usize) {
        p.send(topic, &e.key, to_json_line(&e).as_bytes())
            .expect("produce");
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// A database for one test: a fresh MariaDB database, or a SQLite file in a temp dir.
pub struct TestDb {
    pub url: String,
    mysql: Option<(String, String)>,
    _dir: Option<TempDir>,
}

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

impl TestDb {
    pub fn mysql(tag: &str) -> TestDb {
        let name = format!("weir_{tag}_{}_{}", std::process::id(), nanos() % 1_000_000);
        let url = block_on(weir_store::create_mysql_database(MARIADB, &name))
            .expect("creating a MariaDB database (is MariaDB running on 127.0.0.1:3306?)");
        TestDb {
            url,
            mysql: Some((MARIADB.to_string(), name)),
            _dir: None,
        }
    }

    pub fn sqlite(tag: &str) -> TestDb {
        let dir = TempDir::new(tag);
        let url = format!("sqlite://{}", dir.0.join("weir.db").display());
        TestDb {
            url,
            mysql: None,
            _dir: Some(dir),
        }
    }

    pub fn store(&self) -> Store {
        block_on(Store::connect(&self.url)).expect("connecting to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, name)) = &self.mysql {
            let _ = block_on(weir_store::drop_mysql_database(server, name));
        }
    }
}

/// A temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("weir-{tag}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Runs a future to completion on the tests' shared runtime (database pools stay bound to
/// the runtime that opened them).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
    .block_on(f)
}

/// Writes a spec file into `dir`.
pub fn write_spec(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("spec.toml");
    std::fs::write(&p, text).expect("writing the spec");
    p
}

/// Runs `weir run` to the end of its input and returns its exit status and output.
pub fn run_to_end(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String) {
    let mut cmd = weir();
    cmd.arg("run").args(args).arg("--until-end");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning weir run");
    let started = Instant::now();
    let mut proc = Proc(child);
    loop {
        if let Some(status) = proc.0.try_wait().expect("waiting") {
            let mut text = String::new();
            if let Some(mut o) = proc.0.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut o, &mut text);
            }
            if let Some(mut e) = proc.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut text);
            }
            return (status, text);
        }
        assert!(
            started.elapsed() < timeout,
            "weir run {args:?} did not finish within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic generator for kill times (xorshift), seeded from the clock and
/// printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_clock() -> Rng {
        let seed = (nanos() as u64) | 1;
        eprintln!("kill-time seed: {seed}");
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
