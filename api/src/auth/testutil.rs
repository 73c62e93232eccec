//! An in-memory [`ObjectSource`] for the tests of this module.

use super::{sa_token_index, ObjectSource, SA_TOKEN_INDEX};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Objects by storage; the `sa-token` index is computed on the fly.
#[derive(Default)]
pub struct MemSource {
    objects: Mutex<Vec<(String, Arc<Value>)>>,
    pub index_calls: Mutex<u32>,
    pub list_secret_calls: Mutex<u32>,
}

impl MemSource {
    pub fn new() -> Arc<Self> {
        Arc::new(MemSource::default())
    }

    /// Adds or replaces (same storage/namespace/name) an object.
    pub fn put(&self, storage: &str, obj: Value) {
        let mut objects = self.objects.lock().unwrap();
        let key = |o: &Value| {
            (
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        };
        let k = key(&obj);
        objects.retain(|(s, o)| !(s == storage && key(o) == k));
        objects.push((storage.to_string(), Arc::new(obj)));
    }

    pub fn remove(&self, storage: &str, namespace: &str, name: &str) {
        let mut objects = self.objects.lock().unwrap();
        objects.retain(|(s, o)| {
            !(s == storage
                && o["metadata"]["namespace"].as_str().unwrap_or("") == namespace
                && o["metadata"]["name"].as_str().unwrap_or("") == name)
        });
    }
}

impl ObjectSource for MemSource {
    fn list(&self, storage: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        if storage == "core/secrets" {
            *self.list_secret_calls.lock().unwrap() += 1;
        }
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, o)| {
                s == storage
                    && namespace.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn get(&self, storage: &str, namespace: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .find(|(s, o)| {
                s == storage
                    && o["metadata"]["namespace"].as_str().unwrap_or("") == namespace.unwrap_or("")
                    && o["metadata"]["name"].as_str() == Some(name)
            })
            .map(|(_, o)| o.clone())
    }

    fn by_index(&self, storage: &str, index: &str, value: &str) -> Vec<Arc<Value>> {
        assert_eq!(index, SA_TOKEN_INDEX);
        *self.index_calls.lock().unwrap() += 1;
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, o)| s == storage && sa_token_index(o).iter().any(|v| v == value))
            .map(|(_, o)| o.clone())
            .collect()
    }
}
