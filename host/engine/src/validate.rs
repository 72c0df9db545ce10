//! Checks a plugin's bytes before anything is compiled: it must be a component, export
//! exactly one supported weir world at a supported version, and import only what the
//! allow-list (and the manifest's grants) permit.

use crate::manifest::Grants;
use wasmparser::{Encoding, Parser, Payload};

/// Versions of the `weir:operator` package this host serves.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0"];

/// The kind of a plugin, from the world it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Exports `weir:operator/extractor`.
    Extractor,
    /// Exports `weir:operator/model`.
    Model,
    /// Exports `weir:operator/operator`.
    Operator,
}

impl PluginKind {
    /// The kind's name, as in the WIT interface it exports.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Extractor => "extractor",
            PluginKind::Model => "model",
            PluginKind::Operator => "operator",
        }
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Extractor => "extractor-plugin",
            PluginKind::Model => "model-plugin",
            PluginKind::Operator => "operator-plugin",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`inspect`] found in a valid plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The plugin's kind.
    pub kind: PluginKind,
    /// The `weir:operator` version it was built against.
    pub version: String,
    /// Its top-level imports, as named in the component.
    pub imports: Vec<String>,
}

/// Why a plugin was rejected before compilation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Empty input.
    #[error("the plugin is empty")]
    Empty,
    /// Not WebAssembly at all, or truncated.
    #[error("not a WebAssembly binary: {0}")]
    Malformed(String),
    /// A core module where a component is required.
    #[error(
        "this is a core WebAssembly module, not a component: build the plugin for \
         wasm32-wasip2 with weir-sdk (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// It exports no weir world.
    #[error(
        "the component exports no weir world (expected one of weir:operator/extractor, \
         weir:operator/model or weir:operator/operator); it exports: {0}"
    )]
    WrongWorld(String),
    /// It exports more than one weir world.
    #[error("the component exports more than one weir world: {0}")]
    AmbiguousWorld(String),
    /// It targets a `weir:operator` version this host does not serve.
    #[error("the component targets weir:operator@{found}, but this host supports {supported}")]
    UnsupportedVersion {
        /// Version found.
        found: String,
        /// Versions supported, comma separated.
        supported: String,
    },
    /// It imports something that is never allowed, or not granted.
    #[error("the component imports `{import}`: {reason}")]
    ForbiddenImport {
        /// The import's name.
        import: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Inspects plugin bytes without compiling them.
pub fn inspect(bytes: &[u8], grants: &Grants) -> Result<ComponentInfo, ValidationError> {
    if bytes.is_empty() {
        return Err(ValidationError::Empty);
    }
    let mut depth = 0usize;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ValidationError::Malformed(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(ValidationError::CoreModule);
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| ValidationError::Malformed(e.to_string()))?;
                    imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| ValidationError::Malformed(e.to_string()))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(ValidationError::Malformed("unexpected end of input".into()));
    }

    let mut worlds = Vec::new();
    for name in &exports {
        let Some((iface, version)) = split_weir(name) else {
            continue;
        };
        let kind = match iface {
            "extractor" => PluginKind::Extractor,
            "model" => PluginKind::Model,
            "operator" => PluginKind::Operator,
            _ => continue,
        };
        worlds.push((kind, version.to_string(), name.clone()));
    }
    let (kind, version) = match worlds.as_slice() {
        [] => {
            let list = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            };
            return Err(ValidationError::WrongWorld(list));
        }
        [(kind, version, _)] => (*kind, version.clone()),
        many => {
            let names: Vec<_> = many.iter().map(|w| w.2.as_str()).collect();
            return Err(ValidationError::AmbiguousWorld(names.join(", ")));
        }
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(ValidationError::UnsupportedVersion {
            found: if version.is_empty() {
                "(unversioned)".into()
            } else {
                version
            },
            supported: SUPPORTED_VERSIONS.join(", "),
        });
    }
    // Report a never-grantable import (filesystem, network) before a merely ungranted one.
    let mut refusals: Vec<ValidationError> = imports
        .iter()
        .filter_map(|i| check_import(i, &version, kind, grants).err())
        .collect();
    refusals.sort_by_key(|e| match e {
        ValidationError::ForbiddenImport { reason, .. } if reason.contains("not granted") => 1,
        _ => 0,
    });
    if let Some(first) = refusals.into_iter().next() {
        return Err(first);
    }
    Ok(ComponentInfo {
        kind,
        version,
        imports,
    })
}

/// Splits `weir:operator/<iface>@<version>` into its interface and version.
fn split_weir(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("weir:operator/")?;
    Some(match rest.split_once('@') {
        Some((iface, version)) => (iface, version),
        None => (rest, ""),
    })
}

fn check_import(
    import: &str,
    version: &str,
    kind: PluginKind,
    grants: &Grants,
) -> Result<(), ValidationError> {
    let forbid = |reason: &str| {
        Err(ValidationError::ForbiddenImport {
            import: import.to_string(),
            reason: reason.to_string(),
        })
    };
    if let Some((iface, v)) = split_weir(import) {
        if v != version {
            return forbid("it mixes weir:operator versions");
        }
        return match (iface, kind) {
            ("types" | "log", _) => Ok(()),
            ("state", PluginKind::Extractor | PluginKind::Operator) => Ok(()),
            ("state", PluginKind::Model) => {
                forbid("models have no keyed state; keep parameters in snapshot/restore")
            }
            _ => forbid("not an interface the host provides"),
        };
    }
    let (package, iface) = match import.split_once('/') {
        Some((p, rest)) => (p, rest.split('@').next().unwrap_or(rest)),
        None => return forbid("not an interface the host provides"),
    };
    match package {
        // Inert plumbing every wasm32-wasip2 std guest imports: streams, the std handles
        // (captured as log lines), an empty environment, exit, and randomness for hash seeds.
        "wasi:io" | "wasi:random" => Ok(()),
        "wasi:cli" => match iface {
            "environment" | "exit" | "stdin" | "stdout" | "stderr" | "terminal-input"
            | "terminal-output" | "terminal-stdin" | "terminal-stdout" | "terminal-stderr" => {
                Ok(())
            }
            _ => forbid("not an interface the host provides"),
        },
        "wasi:clocks" if grants.clocks => Ok(()),
        "wasi:clocks" => {
            forbid("clock access is not granted to this plugin (manifest grants.clocks)")
        }
        "wasi:filesystem" => forbid("plugins get no filesystem access"),
        "wasi:sockets" => forbid("plugins get no network access"),
        "wasi:http" => forbid("plugins get no network access"),
        _ => forbid("not an interface the host provides"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_garbage_and_core_modules() {
        let g = Grants::default();
        assert_eq!(inspect(b"", &g), Err(ValidationError::Empty));
        assert!(matches!(
            inspect(b"hello world", &g),
            Err(ValidationError::Malformed(_))
        ));
        let module = wat::parse_str("(module)").unwrap();
        assert_eq!(inspect(&module, &g), Err(ValidationError::CoreModule));
        let truncated = &module[..6];
        assert!(matches!(
            inspect(truncated, &g),
            Err(ValidationError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_a_component_without_a_weir_world() {
        let c = wat::parse_str("(component)").unwrap();
        let err = inspect(&c, &Grants::default()).unwrap_err();
        assert_eq!(err, ValidationError::WrongWorld("nothing".into()));
    }

    #[test]
    fn import_policy() {
        let g = Grants::default();
        let k = PluginKind::Extractor;
        assert!(check_import("wasi:io/streams@0.2.6", "0.1.0", k, &g).is_ok());
        assert!(check_import("wasi:cli/stderr@0.2.6", "0.1.0", k, &g).is_ok());
        assert!(check_import("weir:operator/state@0.1.0", "0.1.0", k, &g).is_ok());
        assert!(check_import("weir:operator/state@0.1.0", "0.1.0", PluginKind::Model, &g).is_err());
        assert!(check_import("weir:operator/log@0.2.0", "0.1.0", k, &g).is_err());
        assert!(check_import("wasi:filesystem/types@0.2.6", "0.1.0", k, &g).is_err());
        assert!(check_import("wasi:sockets/tcp@0.2.6", "0.1.0", k, &g).is_err());
        assert!(check_import("wasi:clocks/wall-clock@0.2.6", "0.1.0", k, &g).is_err());
        let granted = Grants { clocks: true };
        assert!(check_import("wasi:clocks/wall-clock@0.2.6", "0.1.0", k, &granted).is_ok());
        assert!(check_import("acme:evil/thing", "0.1.0", k, &g).is_err());
    }
}
