//! Wiring: resolves a spec's plugins and builds the stage slots a pipeline runs on.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::sync::Arc;
use weir_engine::{Deployment, Engine, Manifest, Slot};
use weir_stream::pipeline::StageSlots;
use weir_stream::spec::{PipelineSpec, StageSpec};

/// Finds a plugin's bytes: a built-in example plugin by name, or a path to a `.wasm`.
pub fn resolve_plugin(name: &str) -> Result<Vec<u8>> {
    let builtin = match name {
        "standardize" => Some(weir_guests::plugins::STANDARDIZE),
        "logistic" => Some(weir_guests::plugins::LOGISTIC),
        "scaled-logistic" => Some(weir_guests::plugins::SCALED_LOGISTIC),
        "window-stats" => Some(weir_guests::plugins::WINDOW_STATS),
        "kmeans" => Some(weir_guests::plugins::KMEANS),
        _ => None,
    };
    let path = builtin.map(Path::new).unwrap_or_else(|| Path::new(name));
    if !path.exists() {
        bail!(
            "plugin `{name}` is neither a built-in example plugin (standardize, logistic, scaled-logistic, window-stats, kmeans) nor a file"
        );
    }
    std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))
}

/// Compiles a stage's plugin and wraps it in a slot.
pub fn stage_slot(engine: &Engine, stage: &StageSpec) -> Result<Arc<Slot>> {
    let bytes = resolve_plugin(stage.plugin.get_ref())?;
    let manifest: Manifest = serde_json::from_str(&stage.manifest_json())
        .with_context(|| format!("limits/grants of stage `{}`", stage.plugin.get_ref()))?;
    let plugin = engine
        .load(&bytes, manifest)
        .with_context(|| format!("loading plugin `{}`", stage.plugin.get_ref()))?;
    Ok(Slot::new(Deployment::new(plugin, stage.config_json())))
}

/// The slots of every Wasm stage of a spec.
pub fn build_slots(engine: &Engine, spec: &PipelineSpec) -> Result<StageSlots> {
    Ok(StageSlots {
        extractor: spec
            .extractor
            .as_ref()
            .map(|s| stage_slot(engine, s))
            .transpose()?,
        model: spec
            .model
            .as_ref()
            .map(|s| stage_slot(engine, s))
            .transpose()?,
        operators: spec
            .operators
            .iter()
            .map(|s| stage_slot(engine, s))
            .collect::<Result<_>>()?,
        window_operator: spec
            .window
            .as_ref()
            .and_then(|w| w.operator.as_ref())
            .map(|s| stage_slot(engine, s))
            .transpose()?,
        variants: Default::default(),
    })
}

/// Milliseconds since the Unix epoch (processing time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
