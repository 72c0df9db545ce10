//! The operator's ceilings on tenants' sandboxes. A spec's `limits` and `grants` ask for a
//! sandbox; the server decides how much any tenant may have ([`ApiConfig::ceiling`], the
//! defaults) and the admin may raise or lower that per tenant (`PUT /v1/tenants/{id}/limits`,
//! stored with the tenant). A stage asking for more than its tenant's ceiling is 422, naming
//! the limit and the ceiling; a limit the stage leaves out is the engine's default, capped by
//! the ceiling.
//!
//! [`ApiConfig::ceiling`]: super::ApiConfig::ceiling

use super::error::ApiError;
use serde_json::{Map, Value};
use weir_engine::{Grants, Limits, Manifest};
use weir_stream::spec::StageSpec;

/// The server's default ceiling: what a tenant's spec may ask for unless the admin set
/// otherwise. Generous next to the engine's defaults ([`Limits::default`]), far below what
/// would let one plugin take the host: 256 MiB of memory, 5 s per call, 1e9 fuel per call.
/// No grants.
pub fn default_ceiling() -> Manifest {
    Manifest {
        limits: Limits {
            memory_bytes: 256 << 20,
            fuel_per_call: 1_000_000_000,
            fuel_per_row: 10_000_000,
            deadline_ms: 5_000,
            table_elements: 100_000,
            tables: 10,
            instances: 20,
            memories: 2,
            output_bytes: 64 << 20,
            log_lines_per_call: 1_024,
            log_line_bytes: 4_096,
            state_value_bytes: 4 << 20,
        },
        grants: Grants { clocks: false },
    }
}

/// A tenant's effective ceiling: the server's, with the admin's stored overrides (a partial
/// `{"limits": {..}, "grants": {..}}` document) laid over it.
pub fn effective(server: &Manifest, overrides: Option<&Value>) -> Result<Manifest, String> {
    overlay(server, overrides).map_err(|e| format!("sandbox ceiling: {e}"))
}

/// `base` with a partial document of overrides laid over it, field by field (unknown
/// fields are errors). The server's defaults and the admin's per-tenant settings, for the
/// ceiling and for the quotas alike.
pub fn overlay<T: serde::Serialize + serde::de::DeserializeOwned>(
    base: &T,
    overrides: Option<&Value>,
) -> Result<T, String> {
    let mut value = serde_json::to_value(base).map_err(|e| e.to_string())?;
    if let Some(o) = overrides {
        merge(&mut value, o)?;
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Lays `over` (objects of objects) over `base`; unknown keys are errors.
fn merge(base: &mut Value, over: &Value) -> Result<(), String> {
    let Value::Object(o) = over else {
        return Err("expected an object".into());
    };
    let Value::Object(b) = base else {
        return Err("expected an object".into());
    };
    for (k, v) in o {
        match b.get_mut(k) {
            Some(slot @ Value::Object(_)) => merge(slot, v).map_err(|e| format!("{k}.{e}"))?,
            Some(slot) => *slot = v.clone(),
            None => {
                let known: Vec<&str> = b.keys().map(String::as_str).collect();
                return Err(format!("unknown field `{k}` (known: {})", known.join(", ")));
            }
        }
    }
    Ok(())
}

/// The sandbox a stage of a tenant's spec gets: its `limits` and `grants` checked against the
/// tenant's ceiling (422 `over_ceiling` naming the limit and the ceiling), and every limit it
/// leaves out set to the engine's default capped by the ceiling.
pub fn stage_manifest(
    stage: &str,
    spec: &StageSpec,
    ceiling: &Manifest,
) -> Result<Manifest, ApiError> {
    let bad = |m: String| ApiError::unprocessable("invalid_spec", format!("stage `{stage}`: {m}"));
    let (Value::Object(defaults), Value::Object(caps)) = (
        serde_json::to_value(Limits::default()).map_err(|e| bad(e.to_string()))?,
        serde_json::to_value(&ceiling.limits).map_err(|e| bad(e.to_string()))?,
    ) else {
        return Err(bad("limits are not an object".into()));
    };
    for k in spec.limits.keys() {
        if !defaults.contains_key(k) {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            return Err(bad(format!(
                "unknown limit `{k}` (known: {})",
                known.join(", ")
            )));
        }
    }
    let mut merged = Map::new();
    for (k, default) in &defaults {
        let cap = caps.get(k).and_then(Value::as_u64).unwrap_or(0);
        let value = match spec.limits.get(k) {
            Some(v) => {
                let n = v
                    .as_integer()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| bad(format!("limits.{k} must be a whole number >= 0")))?;
                if n > cap {
                    return Err(ApiError::unprocessable(
                        "over_ceiling",
                        format!(
                            "stage `{stage}`: limits.{k} = {n} is above this tenant's ceiling \
                             of {cap} (an admin can change it: PUT /v1/tenants/{{id}}/limits)"
                        ),
                    ));
                }
                n
            }
            None => default.as_u64().unwrap_or(0).min(cap),
        };
        merged.insert(k.clone(), Value::from(value));
    }
    let limits: Limits =
        serde_json::from_value(Value::Object(merged)).map_err(|e| bad(e.to_string()))?;
    let mut grants = Grants::default();
    for (k, v) in &spec.grants {
        match (k.as_str(), v.as_bool()) {
            ("clocks", Some(want)) => {
                if want && !ceiling.grants.clocks {
                    return Err(ApiError::unprocessable(
                        "over_ceiling",
                        format!(
                            "stage `{stage}`: grants.clocks is not granted to this tenant (an \
                             admin grants it: PUT /v1/tenants/{{id}}/limits)"
                        ),
                    ));
                }
                grants.clocks = want;
            }
            ("clocks", None) => return Err(bad("grants.clocks must be true or false".into())),
            (other, _) => return Err(bad(format!("unknown grant `{other}` (known: clocks)"))),
        }
    }
    Ok(Manifest { limits, grants })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(limits: &str, grants: &str) -> StageSpec {
        toml::from_str(&format!(
            "plugin = \"p\"\nlimits = {{ {limits} }}\ngrants = {{ {grants} }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_spec_cannot_raise_its_own_sandbox() {
        let c = default_ceiling();
        // The reported spec: a terabyte of memory, unbounded fuel, a day per call, clocks.
        for (limits, grants, what) in [
            (
                "memory_bytes = 1099511627776",
                "",
                "limits.memory_bytes = 1099511627776 is above this tenant's ceiling of 268435456",
            ),
            (
                "fuel_per_call = 9223372036854775807",
                "",
                "limits.fuel_per_call = 9223372036854775807 is above this tenant's ceiling of 1000000000",
            ),
            (
                "deadline_ms = 86400000",
                "",
                "limits.deadline_ms = 86400000 is above this tenant's ceiling of 5000",
            ),
            (
                "instances = 1000",
                "",
                "limits.instances = 1000 is above this tenant's ceiling of 20",
            ),
            (
                "",
                "clocks = true",
                "grants.clocks is not granted to this tenant",
            ),
        ] {
            let e = stage_manifest("model", &stage(limits, grants), &c).unwrap_err();
            assert_eq!(e.code, "over_ceiling", "{limits}{grants}");
            assert!(e.message.starts_with("stage `model`: "), "{}", e.message);
            assert!(e.message.contains(what), "{}", e.message);
        }
        let e = stage_manifest("model", &stage("memory_bytes = -1", ""), &c).unwrap_err();
        assert_eq!(e.code, "invalid_spec");
        let e = stage_manifest("model", &stage("memroy_bytes = 1", ""), &c).unwrap_err();
        assert!(
            e.message.contains("unknown limit `memroy_bytes`"),
            "{}",
            e.message
        );
        // Within the ceiling: as asked; left out: the default.
        let m = stage_manifest("model", &stage("memory_bytes = 268435456", ""), &c).unwrap();
        assert_eq!(m.limits.memory_bytes, 256 << 20);
        assert_eq!(m.limits.deadline_ms, Limits::default().deadline_ms);
    }

    #[test]
    fn the_admin_sets_a_tenants_ceiling() {
        let server = default_ceiling();
        let raised = effective(
            &server,
            Some(&serde_json::json!({"limits": {"memory_bytes": 1u64 << 30}, "grants": {"clocks": true}})),
        )
        .unwrap();
        assert_eq!(raised.limits.memory_bytes, 1 << 30);
        assert_eq!(raised.limits.deadline_ms, 5_000);
        let m = stage_manifest(
            "model",
            &stage("memory_bytes = 1073741824", "clocks = true"),
            &raised,
        )
        .unwrap();
        assert!(m.grants.clocks);
        // Lowered below the engine's default: a stage that says nothing gets the ceiling.
        let low = effective(
            &server,
            Some(&serde_json::json!({"limits": {"memory_bytes": 1 << 20}})),
        )
        .unwrap();
        let m = stage_manifest("model", &stage("", ""), &low).unwrap();
        assert_eq!(m.limits.memory_bytes, 1 << 20);
        let e =
            effective(&server, Some(&serde_json::json!({"limits": {"memroy": 1}}))).unwrap_err();
        assert!(e.contains("unknown field `memroy`"), "{e}");
    }
}
