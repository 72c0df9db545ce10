//! Builds the guest workspaces (`plugins/`, `tests/fixtures/`) for wasm32-wasip2 in release
//! mode, into `<target>/guests`, and writes a module of `pub const NAME: &str` paths, one per
//! guest crate. This is wasmtime's `test-programs/artifacts` pattern: guests are built from
//! source once per build, never committed.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../..").canonicalize()?;
    let target = match env::var_os("WEIR_GUESTS_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => PathBuf::from(dir).join("guests"),
            None => root.join("target/guests"),
        },
    };
    for dir in [
        "plugins",
        "tests/fixtures",
        "sdk/weir-sdk",
        "sdk/weir-sdk-macros",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=WEIR_GUESTS_TARGET_DIR");

    ensure_target()?;
    let mut out = String::new();
    for (module, dir) in [("plugins", "plugins"), ("fixtures", "tests/fixtures")] {
        let ws = root.join(dir);
        let crates = build_workspace(&ws, &target)?;
        writeln!(
            out,
            "/// Guest crates of `{dir}/`, built for wasm32-wasip2."
        )?;
        writeln!(out, "pub mod {module} {{")?;
        let mut all = Vec::new();
        for name in crates {
            let file = target
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", name.replace('-', "_")));
            if !file.exists() {
                return Err(format!("guest {name} did not produce {}", file.display()).into());
            }
            let konst = name.replace('-', "_").to_uppercase();
            writeln!(out, "    /// Path of the `{name}` component.")?;
            writeln!(
                out,
                "    pub const {konst}: &str = {:?};",
                file.display().to_string()
            )?;
            all.push(konst);
        }
        writeln!(out, "    /// Every guest of this workspace.")?;
        writeln!(out, "    pub const ALL: &[&str] = &[{}];", all.join(", "))?;
        writeln!(out, "}}")?;
    }
    let dest = PathBuf::from(env::var("OUT_DIR")?).join("guests.rs");
    std::fs::write(dest, out)?;
    Ok(())
}

/// Makes sure the toolchain has the wasm32-wasip2 standard library. `rust-toolchain.toml`
/// asks rustup for it, but rustup does not add targets to a toolchain that is already
/// installed when automatic installs are off (`RUSTUP_AUTO_INSTALL=0`), so the build adds it
/// itself, once, when rustup is there.
fn ensure_target() -> Res<()> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/wasm32-wasip2").exists() {
        return Ok(());
    }
    println!("cargo:warning=adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    let status = cmd.status().map_err(|e| {
        format!("the wasm32-wasip2 target is missing and rustup cannot add it ({e}): install it with `rustup target add wasm32-wasip2`")
    })?;
    if !status.success() {
        return Err("`rustup target add wasm32-wasip2` failed".into());
    }
    Ok(())
}

/// Builds one guest workspace and returns the names of its member crates.
fn build_workspace(ws: &Path, target: &Path) -> Res<Vec<String>> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(ws)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target);
    // The outer build's flags and wrappers (clippy, coverage) are for host code only.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the guests in {} failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            ws.display(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    // Members are listed in the workspace's Cargo.toml; each member's package name is the
    // first `name = "…"` line of its own Cargo.toml.
    let ws_toml = std::fs::read_to_string(ws.join("Cargo.toml"))?;
    let members = ws_toml
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .ok_or_else(|| format!("no members list in {}/Cargo.toml", ws.display()))?;
    let mut names = Vec::new();
    for member in members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let toml = std::fs::read_to_string(ws.join(member).join("Cargo.toml"))?;
        let name = toml
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \""))
            .and_then(|l| l.split('"').next())
            .ok_or_else(|| format!("no package name in {member}/Cargo.toml"))?;
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(format!("no guest crates found in {}", ws.display()).into());
    }
    Ok(names)
}
