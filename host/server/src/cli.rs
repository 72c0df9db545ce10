//! The API's command-line client: `weir tenant|plugin|pipeline|deploy|swap|rollback|canary|
//! shadow|promote|tail`. Human-readable tables by default, `--json` for scripts. The server
//! is `--api` (or `WEIR_API`), the key `--key` (or `WEIR_API_KEY`).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the API is and who calls it.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// API base URL.
    #[arg(
        long,
        env = "WEIR_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// API key (a tenant's, or the admin key for `tenant` commands).
    #[arg(long, env = "WEIR_API_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `weir tenant …` (admin key).
#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant and print its first API key (shown once).
    Create {
        /// Name: [a-z0-9-], starting with a letter.
        name: String,
    },
    /// List tenants.
    List,
    /// Create another key for a tenant (the admin key, or the tenant's own).
    Key {
        /// Tenant id.
        id: i64,
    },
    /// List a tenant's keys: id, label, creation, last use, revoked.
    Keys {
        /// Tenant id.
        id: i64,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        /// Tenant id.
        id: i64,
        /// Key id (from `weir tenant keys`).
        key_id: i64,
    },
    /// Rotate a key: prints a new key with the same label, and revokes the old one.
    Rotate {
        /// Tenant id.
        id: i64,
        /// Key id (from `weir tenant keys`).
        key_id: i64,
    },
    /// Show a tenant's sandbox ceiling (what its specs' `limits` and `grants` may ask for)
    /// and quotas with its use of them, or set them (admin key).
    Limits {
        /// Tenant id.
        id: i64,
        /// Overrides of the server's default ceiling, as JSON: for example
        /// '{"limits": {"memory_bytes": 1073741824}, "grants": {"clocks": true}}'.
        #[arg(long, conflicts_with = "reset")]
        set: Option<String>,
        /// Overrides of the server's default quotas, as JSON: for example
        /// '{"pipelines": 50, "running_pipelines": 8}'.
        #[arg(long, conflicts_with = "reset")]
        quotas: Option<String>,
        /// Back to the server's default ceiling and quotas.
        #[arg(long)]
        reset: bool,
    },
}

/// `weir plugin …`.
#[derive(Subcommand)]
pub enum PluginCmd {
    /// Create a plugin crate from a template.
    New {
        /// Crate name (and directory).
        name: String,
        /// extractor, model or operator.
        #[arg(long, default_value = "model")]
        kind: String,
        /// Path to weir's `sdk/weir-sdk` (default: the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 and print the component's path.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Upload a component.
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Version (MAJOR.MINOR.PATCH).
        #[arg(long)]
        version: String,
    },
    /// List the tenant's plugins.
    List,
    /// Delete a plugin (refused while deployed).
    Delete {
        /// Plugin id.
        id: i64,
    },
    /// Show a plugin's captured log lines.
    Logs {
        /// Plugin id.
        id: i64,
    },
}

/// `weir pipeline …`.
#[derive(Subcommand)]
pub enum PipelineCmd {
    /// Create a pipeline from a spec file (TOML).
    Create {
        /// The spec.
        spec: PathBuf,
        /// Start it too.
        #[arg(long)]
        start: bool,
    },
    /// List pipelines.
    List,
    /// Show a pipeline: stages, canary, shadow, counters, and per-version figures.
    Status {
        /// Pipeline id or name.
        pipeline: String,
    },
    /// Start a pipeline.
    Start {
        /// Pipeline id or name.
        pipeline: String,
    },
    /// Stop a pipeline.
    Stop {
        /// Pipeline id or name.
        pipeline: String,
    },
    /// Delete a pipeline and its data.
    Delete {
        /// Pipeline id or name.
        pipeline: String,
    },
    /// The deployment history.
    History {
        /// Pipeline id or name.
        pipeline: String,
    },
    /// Send events (a JSON Lines file, `-` for stdin) to a pipeline's source topic through
    /// the API, in batches; no broker address needed.
    Send {
        /// Pipeline id or name.
        pipeline: String,
        /// The file.
        file: PathBuf,
    },
    /// Training: live figures and the champion/challenger decisions, newest first.
    Training {
        /// Pipeline id or name.
        pipeline: String,
        /// Decisions to show.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
}

/// A stage action's arguments.
#[derive(Args)]
pub struct StageArgs {
    /// Pipeline id or name.
    pub pipeline: String,
    /// Plugin: name, name@version or sha256:<hex>.
    pub plugin: String,
    /// The stage.
    #[arg(long, default_value = "model")]
    pub stage: String,
}

/// Runs `weir tenant …`.
pub fn tenant(c: &ClientArgs, cmd: TenantCmd) -> Result<()> {
    let cl = Client::new(c);
    match cmd {
        TenantCmd::Create { name } => {
            let v = cl.call("POST", "/v1/tenants", Some(json!({ "name": name })))?;
            cl.show(&v, || {
                println!(
                    "tenant {} (id {})",
                    v["name"].as_str().unwrap_or(""),
                    v["id"]
                );
                println!(
                    "api key (shown once): {}",
                    v["api_key"].as_str().unwrap_or("")
                );
            })
        }
        TenantCmd::List => {
            let v = cl.call("GET", "/v1/tenants", None)?;
            cl.table(&v, &["id", "name", "created_at"])
        }
        TenantCmd::Limits {
            id,
            set,
            quotas,
            reset,
        } => {
            let path = format!("/v1/tenants/{id}/limits");
            let v = if reset {
                cl.call("PUT", &path, Some(json!({})))?
            } else if set.is_some() || quotas.is_some() {
                // A PUT replaces every override: the one not given here is kept as it is.
                let now = cl.call("GET", &path, None)?;
                let mut body = now["overrides"].as_object().cloned().unwrap_or_default();
                for (field, text, example) in [
                    (
                        "sandbox",
                        set,
                        "'{\"limits\": {\"memory_bytes\": 1073741824}}'",
                    ),
                    ("quotas", quotas, "'{\"pipelines\": 50}'"),
                ] {
                    if let Some(text) = text {
                        let value: Value = serde_json::from_str(&text)
                            .with_context(|| format!("the {field} are JSON, such as {example}"))?;
                        body.insert(field.into(), value);
                    }
                }
                cl.call("PUT", &path, Some(Value::Object(body)))?
            } else {
                cl.call("GET", &path, None)?
            };
            cl.show(&v, || {
                let here = |set: bool| if set { "  (set for this tenant)" } else { "" };
                println!("tenant {}: sandbox ceiling", v["tenant_id"]);
                for group in ["limits", "grants"] {
                    if let Some(m) = v["sandbox"][group].as_object() {
                        for (k, x) in m {
                            let set_here = !v["overrides"]["sandbox"][group][k].is_null();
                            println!("  {group}.{k:<20} {x}{}", here(set_here));
                        }
                    }
                }
                println!("quotas (used / allowed)");
                if let Some(m) = v["quotas"].as_object() {
                    for (k, x) in m {
                        let set_here = !v["overrides"]["quotas"][k].is_null();
                        println!("  {k:<26} {} / {x}{}", v["usage"][k], here(set_here));
                    }
                }
            })
        }
        TenantCmd::Keys { id } => {
            let v = cl.call("GET", &format!("/v1/tenants/{id}/keys"), None)?;
            cl.table(
                &v,
                &["id", "label", "created_at", "last_used_at", "revoked"],
            )
        }
        TenantCmd::Revoke { id, key_id } => {
            let v = cl.call("DELETE", &format!("/v1/tenants/{id}/keys/{key_id}"), None)?;
            cl.show(&v, || println!("key {key_id} of tenant {id} revoked"))
        }
        TenantCmd::Rotate { id, key_id } => {
            let v = cl.call(
                "POST",
                &format!("/v1/tenants/{id}/keys/{key_id}/rotate"),
                None,
            )?;
            cl.show(&v, || {
                println!(
                    "new key (shown once; key {key_id} is revoked): {}",
                    v["api_key"].as_str().unwrap_or("")
                )
            })
        }
        TenantCmd::Key { id } => {
            let v = cl.call("POST", &format!("/v1/tenants/{id}/keys"), None)?;
            cl.show(&v, || println!("{}", v["api_key"].as_str().unwrap_or("")))
        }
    }
}

/// Runs `weir plugin …`.
pub fn plugin(c: &ClientArgs, cmd: PluginCmd) -> Result<()> {
    let cl = Client::new(c);
    match cmd {
        PluginCmd::New { name, kind, sdk } => new_plugin(&name, &kind, sdk),
        PluginCmd::Build { dir } => {
            let path = build_plugin(&dir)?;
            println!("{}", path.display());
            Ok(())
        }
        PluginCmd::Push {
            file,
            name,
            version,
        } => {
            let v = cl.upload(&file, &name, &version)?;
            cl.show(&v, || {
                println!(
                    "{}@{} id {} {} sha256:{} ({} bytes, compiled in {} ms)",
                    v["name"].as_str().unwrap_or(""),
                    v["version"].as_str().unwrap_or(""),
                    v["id"],
                    v["kind"].as_str().unwrap_or(""),
                    v["sha256"].as_str().unwrap_or(""),
                    v["size"],
                    v["details"]["compile_ms"]
                )
            })
        }
        PluginCmd::List => {
            let v = cl.call("GET", "/v1/plugins", None)?;
            cl.table(&v, &["id", "name", "version", "kind", "size", "sha256"])
        }
        PluginCmd::Delete { id } => {
            cl.call("DELETE", &format!("/v1/plugins/{id}"), None)?;
            cl.show(&json!({"deleted": id}), || println!("deleted plugin {id}"))
        }
        PluginCmd::Logs { id } => {
            let v = cl.call("GET", &format!("/v1/plugins/{id}/logs"), None)?;
            cl.table(
                &v,
                &["pipeline_id", "stage", "role", "at_ms", "level", "message"],
            )
        }
    }
}

/// Runs `weir pipeline …`.
pub fn pipeline(c: &ClientArgs, cmd: PipelineCmd) -> Result<()> {
    let cl = Client::new(c);
    match cmd {
        PipelineCmd::Create { spec, start } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let mut v = cl.call("POST", "/v1/pipelines", Some(json!({ "spec": text })))?;
            if start {
                v = cl.call("POST", &format!("/v1/pipelines/{}/start", v["id"]), None)?;
            }
            cl.show(&v, || print_pipeline(&v))
        }
        PipelineCmd::List => {
            let v = cl.call("GET", "/v1/pipelines", None)?;
            cl.table(&v, &["id", "name", "status", "source_topic", "sink_topic"])
        }
        PipelineCmd::Status { pipeline } => {
            let id = cl.pipeline_id(&pipeline)?;
            let v = cl.call("GET", &format!("/v1/pipelines/{id}"), None)?;
            let m = cl.call("GET", &format!("/v1/pipelines/{id}/metrics"), None)?;
            if cl.json {
                println!("{}", json!({ "pipeline": v, "metrics": m }));
                return Ok(());
            }
            print_pipeline(&v);
            if m.as_array().is_some_and(|a| !a.is_empty()) {
                println!();
                cl.table(
                    &m,
                    &[
                        "stage",
                        "role",
                        "version",
                        "calls",
                        "rows",
                        "errors",
                        "latency_mean_ms",
                        "latency_p99_ms",
                        "accuracy",
                    ],
                )?;
            }
            Ok(())
        }
        PipelineCmd::Start { pipeline } => {
            let id = cl.pipeline_id(&pipeline)?;
            let v = cl.call("POST", &format!("/v1/pipelines/{id}/start"), None)?;
            cl.show(&v, || print_pipeline(&v))
        }
        PipelineCmd::Stop { pipeline } => {
            let id = cl.pipeline_id(&pipeline)?;
            let v = cl.call("POST", &format!("/v1/pipelines/{id}/stop"), None)?;
            cl.show(&v, || print_pipeline(&v))
        }
        PipelineCmd::Delete { pipeline } => {
            let id = cl.pipeline_id(&pipeline)?;
            cl.call("DELETE", &format!("/v1/pipelines/{id}"), None)?;
            cl.show(&json!({"deleted": id}), || {
                println!("deleted pipeline {id}")
            })
        }
        PipelineCmd::Send { pipeline, file } => {
            let id = cl.pipeline_id(&pipeline)?;
            let text = if file.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::stdin().read_to_end(&mut s)?;
                s
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            // Batches well inside the server's limits (8 MiB, 100,000 lines).
            let (mut sent, mut batch, mut lines) = (0u64, Vec::new(), 0usize);
            for line in text.split(|b| *b == b'\n') {
                if batch.len() + line.len() + 1 > 4 << 20 || lines == 50_000 {
                    sent += cl.send_events(id, &batch)?;
                    (batch, lines) = (Vec::new(), 0);
                }
                batch.extend_from_slice(line);
                batch.push(b'\n');
                lines += 1;
            }
            if !batch.iter().all(u8::is_ascii_whitespace) {
                sent += cl.send_events(id, &batch)?;
            }
            println!("{sent} events sent to pipeline {id}");
            Ok(())
        }
        PipelineCmd::Training { pipeline, limit } => {
            let id = cl.pipeline_id(&pipeline)?;
            let v = cl.call(
                "GET",
                &format!("/v1/pipelines/{id}/training?limit={limit}"),
                None,
            )?;
            if cl.json {
                println!("{v}");
                return Ok(());
            }
            if v["spec"].is_null() {
                println!("pipeline {id} has no [training] section: its model does not retrain");
                return Ok(());
            }
            let s = &v["status"];
            if s.is_null() {
                println!("not running: no live figures");
            } else {
                println!(
                    "labelled rows {}, window {}, fits {} ({} promoted, {} rejected, {} failed), drifts {}, pending labels {}",
                    s["labelled_rows"],
                    s["window_rows"],
                    s["fits"],
                    s["promotions"],
                    s["rejections"],
                    s["failures"],
                    s["drifts"],
                    s["pending_labels"]
                );
                println!(
                    "last fit {:.1} ms; challenger wins -> serving: last {:.2} ms, max {:.2} ms",
                    s["last_fit_ms"].as_f64().unwrap_or(0.0),
                    s["promotion_to_serving_last_ms"].as_f64().unwrap_or(0.0),
                    s["promotion_to_serving_max_ms"].as_f64().unwrap_or(0.0)
                );
            }
            cl.table(
                &v["decisions"],
                &[
                    "id",
                    "trigger",
                    "outcome",
                    "metric",
                    "challenger_score",
                    "champion_score",
                    "version",
                    "snapshot_id",
                    "parent_snapshot_id",
                ],
            )
        }
        PipelineCmd::History { pipeline } => {
            let id = cl.pipeline_id(&pipeline)?;
            let v = cl.call("GET", &format!("/v1/pipelines/{id}/deployments"), None)?;
            cl.table(
                &v,
                &[
                    "id",
                    "stage",
                    "action",
                    "version",
                    "partition",
                    "offset",
                    "sha256",
                ],
            )
        }
    }
}

/// Runs a stage action (`deploy`, `swap`, `canary`, `shadow`) with a plugin.
pub fn stage(c: &ClientArgs, action: &str, a: &StageArgs, extra: Value) -> Result<()> {
    let cl = Client::new(c);
    let id = cl.pipeline_id(&a.pipeline)?;
    let mut body = json!({ "plugin": a.plugin });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let v = cl.call(
        "POST",
        &format!("/v1/pipelines/{id}/stages/{}/{action}", a.stage),
        Some(body),
    )?;
    cl.show(&v, || print_outcome(&v))
}

/// Runs `rollback` or `promote` (no plugin).
pub fn stage_plain(
    c: &ClientArgs,
    action: &str,
    pipeline: &str,
    stage: &str,
    body: Value,
) -> Result<()> {
    let cl = Client::new(c);
    let id = cl.pipeline_id(pipeline)?;
    let v = cl.call(
        "POST",
        &format!("/v1/pipelines/{id}/stages/{stage}/{action}"),
        Some(body),
    )?;
    cl.show(&v, || print_outcome(&v))
}

/// `weir tail`: prints stored predictions as they arrive (from the first, unless `--follow`
/// stops after `limit`).
pub fn tail(c: &ClientArgs, pipeline: &str, limit: Option<u64>, key: Option<String>) -> Result<()> {
    let cl = Client::new(c);
    let id = cl.pipeline_id(pipeline)?;
    let mut cursor: Option<String> = None;
    let mut printed = 0u64;
    loop {
        let mut path = format!("/v1/pipelines/{id}/predictions?limit=1000");
        if let Some(k) = &key {
            path.push_str(&format!("&key={}", urlencode(k)));
        }
        if let Some(cur) = &cursor {
            path.push_str(&format!("&cursor={cur}"));
        }
        let v = cl.call("GET", &path, None)?;
        for item in v["items"].as_array().into_iter().flatten() {
            if cl.json {
                println!("{item}");
            } else {
                println!(
                    "{}/{} key={} score={} version={}",
                    item["partition"],
                    item["offset"],
                    item["key"].as_str().unwrap_or(""),
                    item["score"],
                    item["model_version"].as_str().unwrap_or("")
                );
            }
            printed += 1;
            if limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
        }
        match v["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_pipeline(v: &Value) {
    println!(
        "pipeline {} (id {}): {}",
        v["name"].as_str().unwrap_or(""),
        v["id"],
        v["status"].as_str().unwrap_or("")
    );
    println!(
        "  reads {}, writes {} (shadow: {})",
        v["source_topic"].as_str().unwrap_or(""),
        v["sink_topic"].as_str().unwrap_or(""),
        v["shadow_topic"].as_str().unwrap_or("")
    );
    for s in v["stages"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {} {}",
            s["stage"].as_str().unwrap_or(""),
            s["plugin"].as_str().unwrap_or(""),
            s["version"].as_str().unwrap_or("")
        );
    }
    if !v["canary"].is_null() {
        println!(
            "  canary     {} {} at {}%",
            v["canary"]["plugin"].as_str().unwrap_or(""),
            v["canary"]["version"].as_str().unwrap_or(""),
            v["canary"]["percent"]
        );
    }
    if !v["shadow"].is_null() {
        println!(
            "  shadow     {} {}",
            v["shadow"]["plugin"].as_str().unwrap_or(""),
            v["shadow"]["version"].as_str().unwrap_or("")
        );
    }
    if let Some(c) = v["counters"].as_object() {
        println!(
            "  in {} out {} windows {} late {} dead {} (replays skipped {})",
            c["records_in"], c["results_out"], c["windows_out"], c["late"], c["dead"], c["skipped"]
        );
        match c["unassigned_s"].as_f64() {
            Some(s) => println!("  partitions: none assigned for {s:.0} s"),
            None => println!("  partitions: {}", c["partitions"]),
        }
        if c["source_errors"].as_u64().unwrap_or(0) > 0 {
            println!("  source errors: {}", c["source_errors"]);
        }
    }
    let gaps = &v["gaps"];
    if gaps["count"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  input gaps: {} ({} records lost where the broker could tell)",
            gaps["count"], gaps["records"]
        );
        let g = &gaps["last"];
        if !g.is_null() {
            println!(
                "    last: {} partition {} at {} ({}): {}",
                g["topic"].as_str().unwrap_or(""),
                g["partition"],
                g["from_offset"],
                g["reason"].as_str().unwrap_or(""),
                g["detail"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(e) = v["error"].as_str() {
        println!("  error: {e}");
    }
}

fn print_outcome(v: &Value) {
    println!(
        "{} {}: {} ({}){}{}",
        v["action"].as_str().unwrap_or(""),
        v["stage"].as_str().unwrap_or(""),
        v["plugin"].as_str().unwrap_or(""),
        v["version"].as_str().unwrap_or(""),
        v["previous"]
            .as_str()
            .map(|p| format!(", replacing {p}"))
            .unwrap_or_default(),
        if v["live"] == false {
            "; applies at the next start"
        } else {
            ""
        }
    );
}

struct Client {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
    json: bool,
}

impl Client {
    fn new(c: &ClientArgs) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Client {
            agent,
            base: c.api.trim_end_matches('/').to_owned(),
            key: c.key.clone(),
            json: c.json,
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::http::request::Builder {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        b
    }

    fn finish(&self, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut resp = resp.with_context(|| format!("calling {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            bail!(
                "{} (HTTP {status} {})",
                v["message"].as_str().unwrap_or("request failed"),
                v["code"].as_str().unwrap_or("")
            );
        }
        Ok(v)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.request(method, path);
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let req = req.body(bytes)?;
        self.finish(self.agent.run(req))
    }

    /// Posts a batch of JSON Lines to a pipeline; returns how many were accepted.
    fn send_events(&self, id: i64, lines: &[u8]) -> Result<u64> {
        let req = self
            .request("POST", &format!("/v1/pipelines/{id}/events"))
            .header("content-type", "application/x-ndjson")
            .body(lines.to_vec())?;
        let v = self.finish(self.agent.run(req))?;
        Ok(v["accepted"].as_u64().unwrap_or(0))
    }

    fn upload(&self, file: &Path, name: &str, version: &str) -> Result<Value> {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata()?.len();
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bar:40} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if self.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut reader = bar.wrap_read(f);
        let mut bytes = Vec::with_capacity(len as usize);
        reader.read_to_end(&mut bytes)?;
        bar.set_message("validating and compiling");
        let req = self
            .request(
                "POST",
                &format!(
                    "/v1/plugins?name={}&version={}",
                    urlencode(name),
                    urlencode(version)
                ),
            )
            .header("content-type", "application/wasm")
            .body(bytes)?;
        let r = self.finish(self.agent.run(req));
        bar.finish_and_clear();
        r
    }

    /// A pipeline's id from its id or name.
    fn pipeline_id(&self, p: &str) -> Result<i64> {
        if let Ok(id) = p.parse::<i64>() {
            return Ok(id);
        }
        let list = self.call("GET", "/v1/pipelines", None)?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|x| x["name"] == p)
            .and_then(|x| x["id"].as_i64())
            .with_context(|| format!("no pipeline named `{p}`"))
    }

    fn show(&self, v: &Value, human: impl FnOnce()) -> Result<()> {
        if self.json {
            println!("{v}");
        } else {
            human();
        }
        Ok(())
    }

    fn table(&self, v: &Value, cols: &[&str]) -> Result<()> {
        if self.json {
            println!("{v}");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                cols.iter()
                    .map(|c| match &r[*c] {
                        Value::String(s) => s.clone(),
                        Value::Null => "-".into(),
                        Value::Number(n) if n.is_f64() => {
                            format!("{:.4}", n.as_f64().unwrap_or(0.0))
                        }
                        x => x.to_string(),
                    })
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
        for r in rows {
            println!("{}", line(r));
        }
        Ok(())
    }
}

const EXTRACTOR_TEMPLATE: &str = r#"use weir_sdk::{Event, Result};

/// Passes the inputs through, plus their sum.
#[weir_sdk::extractor]
fn extract(_config: &serde_json::Value, event: &Event<'_>, out: &mut Vec<f64>) -> Result<()> {
    out.extend_from_slice(event.inputs());
    out.push(event.inputs().iter().sum());
    Ok(())
}
"#;

const MODEL_TEMPLATE: &str = r#"use weir_sdk::{Model, Result};

/// A logistic model over the features, with weights from the config.
struct Scorer {
    coef: Vec<f64>,
    intercept: f64,
}

#[derive(serde::Deserialize)]
struct Config {
    coef: Vec<f64>,
    #[serde(default)]
    intercept: f64,
}

#[weir_sdk::model]
impl Model for Scorer {
    type Config = Config;

    fn new(c: Config) -> Result<Self> {
        Ok(Scorer { coef: c.coef, intercept: c.intercept })
    }

    fn predict(&self, row: &[f64]) -> Result<f64> {
        let z: f64 = self.intercept + self.coef.iter().zip(row).map(|(w, x)| w * x).sum::<f64>();
        // 1 / (1 + exp(-z)) within 1 ulp; faster in Wasm than f64::exp (see the SDK guide).
        Ok(weir_sdk::math::sigmoid(z))
    }
}
"#;

const OPERATOR_TEMPLATE: &str = r#"use weir_sdk::{Operator, Output, Panes, Result};

/// Emits, per window pane, the number of rows it got.
struct Counter;

#[weir_sdk::operator]
impl Operator for Counter {
    type Config = serde_json::Value;

    fn open(_config: serde_json::Value) -> Result<Self> {
        Ok(Counter)
    }

    fn on_window(&mut self, panes: &Panes<'_>, out: &mut Output) -> Result<()> {
        for pane in panes.iter() {
            out.emit(pane.key(), pane.start(), &[pane.row_count() as f64])?;
        }
        Ok(())
    }
}
"#;

fn new_plugin(name: &str, kind: &str, sdk: Option<PathBuf>) -> Result<()> {
    let dir = PathBuf::from(name);
    if dir.exists() {
        bail!("{} exists", dir.display());
    }
    let sdk = match sdk {
        Some(p) => p,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/weir-sdk"),
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the SDK at {}", sdk.display()))?;
    let body = match kind {
        "extractor" => EXTRACTOR_TEMPLATE,
        "model" => MODEL_TEMPLATE,
        "operator" => OPERATOR_TEMPLATE,
        k => bail!("unknown kind `{k}`: extractor, model or operator"),
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nweir-sdk = {{ path = \"{}\" }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n[profile.release]\nopt-level = 3\nlto = true\ncodegen-units = 1\nstrip = true\n\n[workspace]\n",
            sdk.display()
        ),
    )?;
    std::fs::write(
        dir.join("src/lib.rs"),
        format!("//! A weir {kind} plugin.\n\n{body}"),
    )?;
    println!(
        "created {name}/ ({kind}); next: weir plugin build {name} && weir plugin push <wasm> --name {name} --version 0.1.0"
    );
    Ok(())
}

fn build_plugin(dir: &Path) -> Result<PathBuf> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!(
        "cargo build --release --target wasm32-wasip2 in {}",
        dir.display()
    ));
    bar.enable_steady_tick(Duration::from_millis(120));
    let out = std::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    bar.finish_and_clear();
    if !out.status.success() {
        bail!("cargo build failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .flat_map(|v| {
            v["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .rfind(|p| p.extension().is_some_and(|e| e == "wasm"))
        .context("the build produced no .wasm (is the crate a cdylib?)")
}
