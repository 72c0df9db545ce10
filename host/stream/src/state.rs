//! Keyed state behind a trait. Entries are scoped by (tenant, pipeline, stage), then by the
//! record key and an entry name. The in-memory store is the default; the server adds durable
//! stores (MySQL, SQLite) with write-behind at checkpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use weir_engine::KeyedState;

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

/// A plugin's keyed state held in memory, with change tracking: the cache in front of a
/// durable store. Plugins read and write it through the `state` host import with no I/O;
/// the worker drains the changed entries at each checkpoint and writes them in the same
/// transaction as the results and offsets (write-behind). Clones share the same entries.
#[derive(Debug, Default, Clone)]
pub struct TrackedState {
    inner: Arc<Mutex<Tracked>>,
}

type KeyEntries = crate::FastMap<String, crate::FastMap<String, Vec<u8>>>;

#[derive(Debug, Default)]
struct Tracked {
    entries: KeyEntries,
    /// Entries changed since the last cut, each with whether it existed at that cut: one
    /// written and removed between two cuts changed nothing a store holds.
    dirty: crate::FastMap<(String, String), bool>,
}

impl Tracked {
    /// Marks an entry changed; call it before changing it.
    fn mark(&mut self, key: &str, name: &str) {
        let existed = self.entries.get(key).is_some_and(|m| m.contains_key(name));
        self.dirty
            .entry((key.to_owned(), name.to_owned()))
            .or_insert(existed);
    }

    /// Writes (`Some`) or removes (`None`) an entry, marking it changed. A write to an
    /// entry that exists replaces its value without allocating its key or name again.
    fn set(&mut self, key: &str, name: &str, value: Option<Vec<u8>>) {
        self.mark(key, name);
        match value {
            Some(v) => match self.entries.get_mut(key) {
                Some(m) => match m.get_mut(name) {
                    Some(slot) => *slot = v,
                    None => {
                        m.insert(name.to_owned(), v);
                    }
                },
                None => {
                    self.entries
                        .entry(key.to_owned())
                        .or_default()
                        .insert(name.to_owned(), v);
                }
            },
            None => {
                if let Some(m) = self.entries.get_mut(key) {
                    m.remove(name);
                    if m.is_empty() {
                        self.entries.remove(key);
                    }
                }
            }
        }
    }
}

/// A changed entry: `(key, name, value)`, `None` when deleted.
pub type EntryChange = (String, String, Option<Vec<u8>>);

impl TrackedState {
    fn with<R>(&self, f: impl FnOnce(&mut Tracked) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// The entries changed since the last call, sorted, with their current values.
    pub fn take_changes(&self) -> Vec<EntryChange> {
        self.with(|t| {
            let mut out: Vec<EntryChange> = t
                .dirty
                .drain()
                .filter_map(|((k, n), existed)| {
                    let v = t.entries.get(&k).and_then(|m| m.get(&n)).cloned();
                    (existed || v.is_some()).then_some((k, n, v))
                })
                .collect();
            out.sort();
            out
        })
    }

    /// Loads an entry from a checkpoint (not marked changed).
    pub fn load(&self, key: &str, name: &str, value: Vec<u8>) {
        self.with(|t| {
            t.entries
                .entry(key.to_string())
                .or_default()
                .insert(name.to_string(), value);
        });
    }

    /// Forgets every entry of a key (for example when its partition is revoked).
    pub fn remove_key(&self, key: &str) {
        self.with(|t| {
            t.entries.remove(key);
            t.dirty.retain(|(k, _), _| k != key);
        });
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.with(|t| t.entries.values().map(HashMap::len).sum())
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeyedState for TrackedState {
    fn get_many(&mut self, entries: &[(&str, &str)], out: &mut weir_engine::StateValues) {
        self.with(|t| {
            for (k, n) in entries {
                out.push(t.entries.get(*k).and_then(|m| m.get(*n)).map(Vec::as_slice));
            }
        });
    }
    fn put_many(&mut self, changes: &[(&str, &str, Option<&[u8]>)]) {
        self.with(|t| {
            for &(key, name, value) in changes {
                // A value copied over the one it replaces.
                if let Some(value) = value
                    && let Some(slot) = t.entries.get_mut(key).and_then(|m| m.get_mut(name))
                {
                    slot.clear();
                    slot.extend_from_slice(value);
                    t.dirty
                        .entry((key.to_owned(), name.to_owned()))
                        .or_insert(true);
                    continue;
                }
                t.set(key, name, value.map(<[u8]>::to_vec));
            }
        });
    }
    fn get(&mut self, key: &str, name: &str) -> Option<Vec<u8>> {
        self.with(|t| t.entries.get(key).and_then(|m| m.get(name)).cloned())
    }
    fn put(&mut self, key: &str, name: &str, value: Vec<u8>) {
        self.with(|t| t.set(key, name, Some(value)));
    }
    fn delete(&mut self, key: &str, name: &str) {
        self.with(|t| t.set(key, name, None));
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

    #[test]
    fn tracked_state_reports_each_change_once() {
        let t = TrackedState::default();
        let mut plugin_side = t.clone();
        t.load("k", "old", vec![0]);
        assert!(t.take_changes().is_empty(), "loading is not a change");
        plugin_side.put("k", "a", vec![1]);
        plugin_side.put("k", "a", vec![2]);
        plugin_side.put("j", "b", vec![3]);
        plugin_side.delete("k", "old");
        // Written and removed between two cuts: nothing for a store to do.
        plugin_side.put("k", "brief", vec![4]);
        plugin_side.delete("k", "brief");
        plugin_side.delete("k", "never");
        assert_eq!(plugin_side.get("k", "a"), Some(vec![2]));
        assert_eq!(
            t.take_changes(),
            vec![
                ("j".into(), "b".into(), Some(vec![3])),
                ("k".into(), "a".into(), Some(vec![2])),
                ("k".into(), "old".into(), None),
            ]
        );
        assert!(t.take_changes().is_empty());
        // Stored at the last cut, so its removal is a change.
        plugin_side.delete("j", "b");
        assert_eq!(t.take_changes(), vec![("j".into(), "b".into(), None)]);
        plugin_side.put("j", "b", vec![3]);
        assert_eq!(t.take_changes().len(), 1);
        assert_eq!(t.len(), 2);
        t.remove_key("k");
        assert_eq!(t.len(), 1);
    }
}
