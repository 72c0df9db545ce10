//! The pipeline spec: a TOML file that names the source, the plugins of each stage with
//! their config and limits, the window, and the outputs. Errors point at the line and field.
//!
//! ```toml
//! name = "workload"
//!
//! [source]
//! topic = "events"
//! key_field = "key"      # string field holding the record key
//! time_field = "ts"      # integer field holding event time (ms since the epoch)
//! inputs_field = "x"     # array of numbers lifted into the events' numeric inputs
//! input_dims = 8
//!
//! [watermark]
//! out_of_orderness_ms = 0
//! idle_timeout_ms = 10000
//!
//! [extractor]
//! plugin = "standardize"
//! config = { mean = [0.0], std = [1.0] }
//!
//! [model]
//! plugin = "logistic"
//! config = { dims = 2 }
//! limits = { memory_bytes = 33554432 }
//!
//! [window]
//! kind = "tumbling"
//! size_ms = 1000
//! lateness_ms = 2000
//! value_index = 0
//! aggregates = ["count", "mean", "max"]
//!
//! [sink]
//! topic = "scores"
//! windows_topic = "windows"
//! late_topic = "late-events"
//! dead_letter_topic = "dead-letters"
//! ```

use crate::aggregate::AggKind;
use crate::window::WindowKind;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A parsed and validated pipeline spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Pipeline name: letters, digits, `-` and `_`.
    pub name: Spanned<String>,
    /// Where events come from.
    pub source: SourceSpec,
    /// Watermark settings.
    #[serde(default)]
    pub watermark: WatermarkSpec,
    /// Feature extractor stage (Wasm).
    pub extractor: Option<StageSpec>,
    /// Model stage (Wasm), scoring each event's features.
    pub model: Option<StageSpec>,
    /// General operator stages (Wasm), run on the events after the model, in order.
    #[serde(default)]
    pub operators: Vec<StageSpec>,
    /// Keyed event-time windows over the events' inputs.
    pub window: Option<WindowSpec>,
    /// Periodic training of the model stage in the host, with champion/challenger swaps.
    pub training: Option<crate::training::TrainingSpec>,
    /// Where results go.
    pub sink: SinkSpec,
}

/// The source topic and how to read its JSON records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Kafka topic.
    pub topic: Spanned<String>,
    /// JSON field with the key (string or number).
    #[serde(default = "default_key")]
    pub key_field: String,
    /// JSON field with the event time in ms (integer).
    #[serde(default = "default_time")]
    pub time_field: String,
    /// JSON field with an array of numbers: the events' numeric inputs.
    pub inputs_field: String,
    /// Length of that array.
    pub input_dims: Spanned<u32>,
    /// Hand the raw JSON payload to the stages too (costs a copy per event).
    #[serde(default)]
    pub with_payload: bool,
    /// JSON field with the event's label (a number or a boolean), for a model stage with
    /// `train = true`.
    pub label_field: Option<String>,
    /// What to do when input is missing from the topic: `fail` (the default) or `skip`.
    #[serde(default)]
    pub on_gap: OnGap,
    /// Partitions of the topic when weir creates it (default 1). A topic that exists keeps
    /// its own.
    pub partitions: Option<Spanned<u32>>,
}

/// What a worker does when records it has not processed are no longer in the source topic
/// (retention deleted them, or the broker or topic was replaced), or when its stored position
/// points past the topic's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGap {
    /// Stop the pipeline with an error naming the topic, partition, range and likely cause.
    #[default]
    Fail,
    /// Go on from the first record that is there, recording the gap (the `gaps` table, the
    /// `weir_input_gap_records_total` metric and the pipeline's status).
    Skip,
}

/// Longest Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Checks a topic name against Kafka's rules: 1 to 249 of `[A-Za-z0-9._-]`, and not `.` or
/// `..`.
pub fn check_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic `{}…` is {} characters long; Kafka allows at most {MAX_TOPIC_LEN}",
            &name[..name.char_indices().nth(32).map_or(name.len(), |(i, _)| i)],
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic {name:?} has the character {c:?}; Kafka topics use letters, digits, `.`, `_` \
             and `-`"
        ));
    }
    Ok(())
}

/// Most partitions weir creates a topic with.
pub const MAX_PARTITIONS: u32 = 1024;

fn default_key() -> String {
    "key".into()
}
fn default_time() -> String {
    "ts".into()
}

/// Watermark settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// Bounded out-of-orderness: the watermark trails the max event time by this much.
    #[serde(default = "zero_i64")]
    pub out_of_orderness_ms: Spanned<i64>,
    /// A partition silent this long (processing time) stops holding the watermark back.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
}

fn zero_i64() -> Spanned<i64> {
    Spanned::new(0..0, 0)
}
fn zero_u32() -> Spanned<u32> {
    Spanned::new(0..0, 0)
}

fn default_idle() -> u64 {
    10_000
}

impl Default for WatermarkSpec {
    fn default() -> Self {
        WatermarkSpec {
            out_of_orderness_ms: zero_i64(),
            idle_timeout_ms: default_idle(),
        }
    }
}

/// A Wasm stage: which plugin, its config, its limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Plugin name (as uploaded or built), a path to a `.wasm`, or `sha256:<hex>`.
    pub plugin: Spanned<String>,
    /// Configuration, handed to the plugin as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Limit overrides (see `weir_engine::Limits`).
    #[serde(default)]
    pub limits: toml::Table,
    /// Grants (see `weir_engine::Grants`).
    #[serde(default)]
    pub grants: toml::Table,
    /// Model stage only: learn online, prequentially (each labelled event is scored by the
    /// model as it was, then the model trains on it). Needs `source.label_field`. The
    /// model's parameters are snapshotted at every checkpoint when a database is attached.
    #[serde(default)]
    pub train: bool,
}

impl StageSpec {
    /// The config as a JSON document.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }

    /// The limits and grants as a JSON manifest document.
    pub fn manifest_json(&self) -> String {
        serde_json::json!({ "limits": self.limits, "grants": self.grants }).to_string()
    }
}

/// The window stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// `tumbling`, `sliding` or `session`.
    pub kind: Spanned<String>,
    /// Window length (tumbling, sliding).
    pub size_ms: Option<i64>,
    /// Slide (sliding).
    pub slide_ms: Option<i64>,
    /// Gap (session).
    pub gap_ms: Option<i64>,
    /// Allowed lateness.
    #[serde(default = "zero_i64")]
    pub lateness_ms: Spanned<i64>,
    /// Index of the input aggregated by the built-in aggregates.
    #[serde(default = "zero_u32")]
    pub value_index: Spanned<u32>,
    /// Built-in aggregates to emit.
    #[serde(default)]
    pub aggregates: Vec<Spanned<String>>,
    /// A Wasm operator whose `on-window` hook computes the window results instead.
    pub operator: Option<StageSpec>,
    /// The inputs (by index, in this order) that the rows handed to the window operator
    /// carry; every input when absent. A pane keeps each row until it fires, in memory and
    /// in checkpoints, so name only what the operator reads (the workload's `window-stats`
    /// reads one value: `row_inputs = [0]`, an eighth of the state). Stored window state
    /// records its row width: a restore with another width is refused with a clear error.
    pub row_inputs: Option<Vec<Spanned<u32>>>,
    /// Names of the values the window operator emits (default `v0`, `v1`, …).
    #[serde(default)]
    pub outputs: Vec<String>,
}

/// Outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Per-event results.
    pub topic: String,
    /// Window results.
    pub windows_topic: Option<String>,
    /// Events too late for every window.
    pub late_topic: Option<String>,
    /// Records that could not be processed, with the reason.
    pub dead_letter_topic: String,
    /// Scores of a shadow model (default: `<topic>.shadow`).
    pub shadow_topic: Option<String>,
}

impl SinkSpec {
    /// Where a shadow model's scores go.
    pub fn shadow_topic(&self) -> String {
        self.shadow_topic
            .clone()
            .unwrap_or_else(|| format!("{}.shadow", self.topic))
    }
}

/// A spec error, with the line and column it points at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location.map(|(l, c)| format!("line {l}, column {c}: ")).unwrap_or_default())]
pub struct SpecError {
    /// 1-based (line, column), when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Ceilings on what a spec may ask of the host: the sizes of its windows, how long it keeps
/// state for late events and labels, and how much it trains on. A spec over a bound is
/// rejected at parse time, naming the field and the bound. The server sets them
/// (`weir serve` takes the defaults); a spec cannot raise them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecBounds {
    /// Longest window (`size_ms`) or session gap (`gap_ms`).
    pub window_ms: i64,
    /// Most windows one event belongs to (a sliding window's `size_ms / slide_ms`).
    pub windows_per_event: i64,
    /// Most windows open at once per key: `(size_ms + lateness_ms) / slide_ms`.
    pub windows_per_key: i64,
    /// Longest `window.lateness_ms` and `watermark.out_of_orderness_ms`.
    pub lateness_ms: i64,
    /// Longest `training.label_wait_ms` and `training.window_ms`.
    pub label_wait_ms: i64,
    /// Most events waiting for a label (`training.max_pending`).
    pub pending_labels: usize,
    /// Most rows a training window keeps (`training.window_rows`).
    pub training_rows: usize,
}

impl Default for SpecBounds {
    fn default() -> Self {
        const DAY_MS: i64 = 86_400_000;
        SpecBounds {
            window_ms: 7 * DAY_MS,
            windows_per_event: 100,
            windows_per_key: 10_000,
            lateness_ms: DAY_MS,
            label_wait_ms: DAY_MS,
            pending_labels: 1_000_000,
            training_rows: 1_000_000,
        }
    }
}

impl SpecBounds {
    /// No bounds: for reading back a spec that was accepted once (under bounds that may
    /// since have changed).
    pub fn unlimited() -> Self {
        SpecBounds {
            window_ms: i64::MAX,
            windows_per_event: i64::MAX,
            windows_per_key: i64::MAX,
            lateness_ms: i64::MAX,
            label_wait_ms: i64::MAX,
            pending_labels: usize::MAX,
            training_rows: usize::MAX,
        }
    }
}

impl PipelineSpec {
    /// Parses and validates a spec, within the default [`SpecBounds`].
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        Self::parse_bounded(text, &SpecBounds::default())
    }

    /// Parses and validates a spec, within `bounds`.
    pub fn parse_bounded(text: &str, bounds: &SpecBounds) -> Result<Self, SpecError> {
        let spec: PipelineSpec = toml::from_str(text).map_err(|e| SpecError {
            location: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        spec.validate(text)?;
        spec.check_bounds(text, bounds)?;
        Ok(spec)
    }

    fn check_bounds(&self, text: &str, b: &SpecBounds) -> Result<(), SpecError> {
        let over = |span: std::ops::Range<usize>, field: &str, value: i128, max: i128| {
            if value > max {
                Err(SpecError {
                    location: (!span.is_empty()).then(|| line_col(text, span.start)),
                    message: format!(
                        "{field} is {value}; this server allows at most {max} (its spec bounds)"
                    ),
                })
            } else {
                Ok(())
            }
        };
        let wm = &self.watermark.out_of_orderness_ms;
        over(
            wm.span(),
            "watermark.out_of_orderness_ms",
            (*wm.get_ref()).into(),
            b.lateness_ms.into(),
        )?;
        if let Some(w) = &self.window {
            let span = w.kind.span();
            let lateness = *w.lateness_ms.get_ref();
            over(
                w.lateness_ms.span(),
                "window.lateness_ms",
                lateness.into(),
                b.lateness_ms.into(),
            )?;
            match w.kind_checked() {
                Ok(WindowKind::Tumbling { size_ms }) => {
                    over(
                        span.clone(),
                        "window.size_ms",
                        size_ms.into(),
                        b.window_ms.into(),
                    )?;
                    let open =
                        (i128::from(size_ms) + i128::from(lateness)) / i128::from(size_ms.max(1));
                    over(span, "windows open per key", open, b.windows_per_key.into())?;
                }
                Ok(WindowKind::Sliding { size_ms, slide_ms }) => {
                    over(
                        span.clone(),
                        "window.size_ms",
                        size_ms.into(),
                        b.window_ms.into(),
                    )?;
                    let slide = i128::from(slide_ms.max(1));
                    over(
                        span.clone(),
                        "windows per event (size_ms / slide_ms)",
                        i128::from(size_ms) / slide,
                        b.windows_per_event.into(),
                    )?;
                    over(
                        span,
                        "windows open per key ((size_ms + lateness_ms) / slide_ms)",
                        (i128::from(size_ms) + i128::from(lateness)) / slide,
                        b.windows_per_key.into(),
                    )?;
                }
                Ok(WindowKind::Session { gap_ms }) => {
                    over(span, "window.gap_ms", gap_ms.into(), b.window_ms.into())?;
                }
                Err(_) => {}
            }
        }
        if let Some(t) = &self.training {
            let span = t.join.span();
            over(
                span.clone(),
                "training.label_wait_ms",
                t.label_wait_ms.into(),
                b.label_wait_ms.into(),
            )?;
            over(
                span.clone(),
                "training.window_ms",
                t.window_ms.unwrap_or(0).into(),
                b.label_wait_ms.into(),
            )?;
            over(
                span,
                "training.max_pending",
                t.max_pending as i128,
                b.pending_labels as i128,
            )?;
            over(
                t.window_rows.span(),
                "training.window_rows",
                *t.window_rows.get_ref() as i128,
                b.training_rows as i128,
            )?;
        }
        Ok(())
    }

    fn validate(&self, text: &str) -> Result<(), SpecError> {
        let at = |span: std::ops::Range<usize>, message: String| SpecError {
            location: if span.is_empty() && span.start == 0 {
                None
            } else {
                Some(line_col(text, span.start))
            },
            message,
        };
        let name = self.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at(
                self.name.span(),
                format!("name `{name}`: use letters, digits, `-` and `_`"),
            ));
        }
        check_topic(self.source.topic.get_ref())
            .map_err(|m| at(self.source.topic.span(), format!("source.topic: {m}")))?;
        let sink = &self.sink;
        for (field, topic) in [
            ("sink.topic", Some(&sink.topic)),
            ("sink.windows_topic", sink.windows_topic.as_ref()),
            ("sink.late_topic", sink.late_topic.as_ref()),
            ("sink.dead_letter_topic", Some(&sink.dead_letter_topic)),
            ("sink.shadow_topic", Some(&sink.shadow_topic())),
        ] {
            if let Some(t) = topic {
                check_topic(t).map_err(|m| SpecError {
                    location: None,
                    message: format!("{field}: {m}"),
                })?;
            }
        }
        if let Some(p) = &self.source.partitions
            && !(1..=MAX_PARTITIONS).contains(p.get_ref())
        {
            return Err(at(
                p.span(),
                format!("source.partitions must be between 1 and {MAX_PARTITIONS}"),
            ));
        }
        if *self.source.input_dims.get_ref() == 0 {
            return Err(at(
                self.source.input_dims.span(),
                "source.input_dims must be at least 1".into(),
            ));
        }
        if *self.watermark.out_of_orderness_ms.get_ref() < 0 {
            return Err(at(
                self.watermark.out_of_orderness_ms.span(),
                "watermark.out_of_orderness_ms must be >= 0".into(),
            ));
        }
        for stage in self
            .extractor
            .iter()
            .chain(&self.model)
            .chain(&self.operators)
        {
            if stage.plugin.get_ref().is_empty() {
                return Err(at(stage.plugin.span(), "plugin must not be empty".into()));
            }
        }
        for stage in self.extractor.iter().chain(&self.operators) {
            if stage.train {
                return Err(at(
                    stage.plugin.span(),
                    "`train` applies to the model stage only".into(),
                ));
            }
        }
        if let Some(m) = &self.model
            && m.train
            && self.source.label_field.is_none()
        {
            return Err(at(
                m.plugin.span(),
                "model.train needs source.label_field (the field holding each event's label)"
                    .into(),
            ));
        }
        if let Some(t) = &self.training {
            t.validate(self).map_err(|(span, m)| at(span, m))?;
        }
        if let Some(w) = &self.window {
            let kind = w.kind_checked().map_err(|m| at(w.kind.span(), m))?;
            kind.validate()
                .map_err(|m| at(w.kind.span(), format!("window: {m}")))?;
            if *w.lateness_ms.get_ref() < 0 {
                return Err(at(
                    w.lateness_ms.span(),
                    "window.lateness_ms must be >= 0".into(),
                ));
            }
            if *w.value_index.get_ref() >= *self.source.input_dims.get_ref() {
                return Err(at(
                    w.value_index.span(),
                    format!(
                        "window.value_index {} is outside the {} inputs",
                        w.value_index.get_ref(),
                        self.source.input_dims.get_ref()
                    ),
                ));
            }
            for a in &w.aggregates {
                if AggKind::parse(a.get_ref()).is_none() {
                    return Err(at(
                        a.span(),
                        format!(
                            "unknown aggregate `{}` (count, sum, mean, min, max, variance)",
                            a.get_ref()
                        ),
                    ));
                }
            }
            if let Some(inputs) = &w.row_inputs {
                if w.operator.is_none() {
                    return Err(at(
                        w.kind.span(),
                        "window.row_inputs chooses what the window operator's rows carry, \
                         and the window has no operator"
                            .into(),
                    ));
                }
                if inputs.is_empty() {
                    return Err(at(
                        w.kind.span(),
                        "window.row_inputs is empty: name at least one input".into(),
                    ));
                }
                for i in inputs {
                    if *i.get_ref() >= *self.source.input_dims.get_ref() {
                        return Err(at(
                            i.span(),
                            format!(
                                "window.row_inputs: input {} is outside the {} inputs",
                                i.get_ref(),
                                self.source.input_dims.get_ref()
                            ),
                        ));
                    }
                }
            }
            if w.aggregates.is_empty() && w.operator.is_none() {
                return Err(at(
                    w.kind.span(),
                    "window needs `aggregates` or an `operator`".into(),
                ));
            }
        }
        Ok(())
    }
}

impl WindowSpec {
    /// The window kind with its sizes.
    pub fn kind_checked(&self) -> Result<WindowKind, String> {
        let need = |v: Option<i64>, f: &str| {
            v.ok_or_else(|| format!("a {} window needs `{f}`", self.kind.get_ref()))
        };
        Ok(match self.kind.get_ref().as_str() {
            "tumbling" => WindowKind::Tumbling {
                size_ms: need(self.size_ms, "size_ms")?,
            },
            "sliding" => WindowKind::Sliding {
                size_ms: need(self.size_ms, "size_ms")?,
                slide_ms: need(self.slide_ms, "slide_ms")?,
            },
            "session" => WindowKind::Session {
                gap_ms: need(self.gap_ms, "gap_ms")?,
            },
            other => {
                return Err(format!(
                    "unknown window kind `{other}` (tumbling, sliding, session)"
                ));
            }
        })
    }

    /// The built-in aggregates, in order.
    pub fn aggregate_kinds(&self) -> Vec<AggKind> {
        self.aggregates
            .iter()
            .filter_map(|a| AggKind::parse(a.get_ref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "workload"
[source]
topic = "events"
inputs_field = "x"
input_dims = 8
[extractor]
plugin = "standardize"
config = { mean = [1.0], std = [2.0] }
[model]
plugin = "logistic"
config = { dims = 9 }
limits = { memory_bytes = 1048576 }
[window]
kind = "tumbling"
size_ms = 1000
lateness_ms = 2000
aggregates = ["count", "mean", "max"]
[sink]
topic = "scores"
dead_letter_topic = "dlq"
"#;

    #[test]
    fn parses_a_good_spec() {
        let s = PipelineSpec::parse(GOOD).unwrap();
        assert_eq!(s.name.get_ref(), "workload");
        assert_eq!(
            s.extractor.as_ref().unwrap().config_json(),
            r#"{"mean":[1.0],"std":[2.0]}"#
        );
        assert!(
            s.model
                .as_ref()
                .unwrap()
                .manifest_json()
                .contains("memory_bytes")
        );
        let w = s.window.as_ref().unwrap();
        assert_eq!(
            w.kind_checked().unwrap(),
            WindowKind::Tumbling { size_ms: 1000 }
        );
        assert_eq!(
            w.aggregate_kinds(),
            vec![AggKind::Count, AggKind::Mean, AggKind::Max]
        );
        assert_eq!(s.source.key_field, "key");
    }

    #[test]
    fn topics_follow_kafkas_rules() {
        for bad in ["../x", "a/b", "a\\nb", " ", "..", "."] {
            let e = PipelineSpec::parse(
                &GOOD.replace("topic = \"events\"", &format!("topic = \"{bad}\"")),
            )
            .unwrap_err();
            assert!(e.message.starts_with("source.topic: "), "{bad}: {e}");
            assert_eq!(e.location.map(|l| l.0), Some(4), "{bad}: {e}");
        }
        let long = "t".repeat(250);
        let e =
            PipelineSpec::parse(&GOOD.replace("\"scores\"", &format!("\"{long}\""))).unwrap_err();
        assert!(
            e.message
                .contains("250 characters long; Kafka allows at most 249"),
            "{e}"
        );
        // 243 characters leave no room for the default shadow topic's `.shadow`.
        let e =
            PipelineSpec::parse(&GOOD.replace("\"scores\"", &format!("\"{}\"", "t".repeat(243))))
                .unwrap_err();
        assert!(e.message.starts_with("sink.shadow_topic: "), "{e}");
        let ok = "A-z_0.9".to_owned() + &"t".repeat(235);
        PipelineSpec::parse(&GOOD.replace("\"scores\"", &format!("\"{ok}\""))).unwrap();
    }

    #[test]
    fn windows_and_waits_stay_within_the_bounds() {
        let sliding = |size: i64, slide: i64| {
            GOOD.replace(
                "kind = \"tumbling\"\nsize_ms = 1000",
                &format!("kind = \"sliding\"\nsize_ms = {size}\nslide_ms = {slide}"),
            )
        };
        // The reported case: a window of 1e12 ms sliding by 1 ms.
        let e = PipelineSpec::parse(&sliding(1_000_000_000_000, 1)).unwrap_err();
        assert!(
            e.message
                .contains("window.size_ms is 1000000000000; this server allows at most 604800000"),
            "{e}"
        );
        let e = PipelineSpec::parse(&sliding(1_000_000, 1)).unwrap_err();
        assert!(
            e.message.contains(
                "windows per event (size_ms / slide_ms) is 1000000; this server allows at most 100"
            ),
            "{e}"
        );
        assert_eq!(e.location.map(|l| l.0), Some(15), "{e}");
        PipelineSpec::parse(&sliding(100_000, 1_000)).unwrap();
        PipelineSpec::parse(&sliding(101_000, 1_000)).unwrap_err();
        let e = PipelineSpec::parse(&GOOD.replace("lateness_ms = 2000", "lateness_ms = 86400001"))
            .unwrap_err();
        assert!(
            e.message.starts_with("window.lateness_ms is 86400001"),
            "{e}"
        );
        // Many windows open per key: a day of lateness over 1 s windows.
        let e = PipelineSpec::parse(&GOOD.replace("lateness_ms = 2000", "lateness_ms = 86400000"))
            .unwrap_err();
        assert!(
            e.message.starts_with("windows open per key is 86401"),
            "{e}"
        );
        // A server may set its own bounds.
        let tight = SpecBounds {
            windows_per_key: 2,
            ..SpecBounds::default()
        };
        let e = PipelineSpec::parse_bounded(GOOD, &tight).unwrap_err();
        assert!(e.message.contains("at most 2"), "{e}");
        PipelineSpec::parse_bounded(
            &GOOD.replace("lateness_ms = 2000", "lateness_ms = 1000"),
            &tight,
        )
        .unwrap();
    }

    #[test]
    fn errors_point_at_the_line_and_field() {
        let e = PipelineSpec::parse(&GOOD.replace("size_ms = 1000", "size_ms = 1000\nsize = 3"))
            .unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(17), "{e}");
        assert!(e.message.contains("unknown field `size`"), "{e}");

        let e = PipelineSpec::parse(&GOOD.replace("\"max\"]", "\"median\"]")).unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(18), "{e}");
        assert!(e.to_string().starts_with("line 18, column"), "{e}");
        assert!(e.message.contains("unknown aggregate `median`"), "{e}");

        let e = PipelineSpec::parse(&GOOD.replace("kind = \"tumbling\"", "kind = \"sliding\""))
            .unwrap_err();
        assert!(e.message.contains("needs `slide_ms`"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(15));

        let e =
            PipelineSpec::parse(&GOOD.replace("input_dims = 8", "input_dims = \"8\"")).unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(6), "{e}");

        let e = PipelineSpec::parse(&GOOD.replace("name = \"workload\"", "name = \"a b\""))
            .unwrap_err();
        assert_eq!(e.location, Some((2, 8)), "{e}");

        let e = PipelineSpec::parse(&GOOD.replace("[sink]\ntopic = \"scores\"\n", "[sink]\n"))
            .unwrap_err();
        assert!(e.message.contains("missing field `topic`"), "{e}");

        let e = PipelineSpec::parse(
            &GOOD.replace("input_dims = 8", "input_dims = 8\non_gap = \"ignore\""),
        )
        .unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(7), "{e}");
        assert!(e.message.contains("unknown variant `ignore`"), "{e}");

        let e =
            PipelineSpec::parse(&GOOD.replace("input_dims = 8", "input_dims = 8\npartitions = 0"))
                .unwrap_err();
        assert_eq!(e.location, Some((7, 14)), "{e}");
        assert!(e.message.contains("between 1 and 1024"), "{e}");
    }

    #[test]
    fn row_inputs_name_inputs_an_operator_reads() {
        // GOOD's window has built-in aggregates only: rows go to no operator.
        let e = PipelineSpec::parse(
            &GOOD.replace("lateness_ms = 2000", "lateness_ms = 2000\nrow_inputs = [0]"),
        )
        .unwrap_err();
        assert!(e.message.contains("the window has no operator"), "{e}");
        let with_op = GOOD.replace(
            "aggregates = [\"count\", \"mean\", \"max\"]",
            "row_inputs = [2, 0]\n[window.operator]\nplugin = \"window-stats\"",
        );
        let s = PipelineSpec::parse(&with_op).unwrap();
        let inputs: Vec<u32> = s
            .window
            .unwrap()
            .row_inputs
            .unwrap()
            .iter()
            .map(|i| *i.get_ref())
            .collect();
        assert_eq!(inputs, [2, 0]);
        let e = PipelineSpec::parse(&with_op.replace("[2, 0]", "[2, 8]")).unwrap_err();
        assert!(e.message.contains("input 8 is outside the 8 inputs"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(18), "{e}");
        let e = PipelineSpec::parse(&with_op.replace("[2, 0]", "[]")).unwrap_err();
        assert!(e.message.contains("row_inputs is empty"), "{e}");
    }

    #[test]
    fn gaps_fail_unless_the_spec_says_skip() {
        let s = PipelineSpec::parse(GOOD).unwrap();
        assert_eq!((s.source.on_gap, s.source.partitions), (OnGap::Fail, None));
        let s = PipelineSpec::parse(&GOOD.replace(
            "input_dims = 8",
            "input_dims = 8\non_gap = \"skip\"\npartitions = 16",
        ))
        .unwrap();
        assert_eq!(s.source.on_gap, OnGap::Skip);
        assert_eq!(s.source.partitions.map(|p| p.into_inner()), Some(16));
    }
}
