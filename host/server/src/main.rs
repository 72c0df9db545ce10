//! `weir`: real-time ML pipelines with user-written WebAssembly operators.

mod bench;
mod up;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Real-time ML pipelines with user-written WebAssembly operators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job: the example plugins scoring a live stream of workload events.
    Up(up::UpArgs),
    /// Validate a plugin and print what it is (kind, WIT version, imports, compile time).
    Inspect {
        /// The component (.wasm).
        plugin: PathBuf,
    },
    /// Run a named benchmark (`engine`). Its last line is `key=value` pairs.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weir=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up(args) => up::run(args),
        Command::Inspect { plugin } => inspect(&plugin),
        Command::Bench(args) => bench::run(args),
    }
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let engine = weir_engine::Engine::new(Default::default())?;
    let plugin = engine.load(&bytes, Default::default())?;
    println!("plugin   {}", plugin.id());
    println!(
        "kind     {} (world weir:operator/{}@{})",
        plugin.kind(),
        plugin.kind().world(),
        plugin.info().version
    );
    println!("size     {} bytes", plugin.size());
    println!(
        "compile  {:.1} ms",
        plugin.compile_time().as_secs_f64() * 1e3
    );
    println!("imports");
    for i in &plugin.info().imports {
        println!("  {i}");
    }
    Ok(())
}
