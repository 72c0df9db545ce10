//! Keyed state behind a trait. Entries are scoped by (tenant, pipeline, stage), then by the
//! record key and an entry name. The in-memory store is the default; the server adds durable
//! stores (MySQL, SQLite) with write-behind at checkpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The scope of a stage's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateScope {
    /// Tenant id.
    pub tenant: String,
    /// Pipeline id.
    pub pipeline: String,
    /// Stage name within the pipeline.
    pub stage: String,
}

/// A keyed-state store.
pub trait StateStore: Send + Sync {
    /// Reads an entry.
    fn get(&self, scope: &StateScope, key: &str, name: &str) -> Option<Vec<u8>>;
    /// Writes an entry.
    fn put(&self, scope: &StateScope, key: &str, name: &str, value: Vec<u8>);
    /// Removes an entry.
    fn delete(&self, scope: &StateScope, key: &str, name: &str);
    /// Every entry of a scope, as `(key, name, value)`, for checkpoints.
    fn entries(&self, scope: &StateScope) -> Vec<(String, String, Vec<u8>)>;
}

type Entries = HashMap<(String, String), Vec<u8>>;

/// In-memory [`StateStore`].
#[derive(Debug, Default, Clone)]
pub struct MemoryStateStore {
    scopes: Arc<Mutex<HashMap<StateScope, Entries>>>,
}

impl MemoryStateStore {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<StateScope, Entries>) -> R) -> R {
        let mut g = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, scope: &StateScope, key: &str, name: &str) -> Option<Vec<u8>> {
        self.with(|s| {
            s.get(scope)?
                .get(&(key.to_string(), name.to_string()))
                .cloned()
        })
    }
    fn put(&self, scope: &StateScope, key: &str, name: &str, value: Vec<u8>) {
        self.with(|s| {
            s.entry(scope.clone())
                .or_default()
                .insert((key.to_string(), name.to_string()), value)
        });
    }
    fn delete(&self, scope: &StateScope, key: &str, name: &str) {
        self.with(|s| {
            if let Some(m) = s.get_mut(scope) {
                m.remove(&(key.to_string(), name.to_string()));
            }
        });
    }
    fn entries(&self, scope: &StateScope) -> Vec<(String, String, Vec<u8>)> {
        self.with(|s| {
            let mut v: Vec<_> = s
                .get(scope)
                .map(|m| {
                    m.iter()
                        .map(|((k, n), v)| (k.clone(), n.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_isolated() {
        let s = MemoryStateStore::default();
        let a = StateScope {
            tenant: "a".into(),
            pipeline: "p".into(),
            stage: "s".into(),
        };
        let b = StateScope {
            tenant: "b".into(),
            ..a.clone()
        };
        s.put(&a, "u1", "n", vec![1]);
        assert_eq!(s.get(&a, "u1", "n"), Some(vec![1]));
        assert_eq!(s.get(&b, "u1", "n"), None);
        assert_eq!(s.entries(&a).len(), 1);
        s.delete(&a, "u1", "n");
        assert!(s.entries(&a).is_empty());
    }
}
