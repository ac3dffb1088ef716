//! Layered run configuration for any serde config type: defaults (or a stored run's
//! `config.resolved.toml`), then a `--config FILE`, then explicit command-line flags, then
//! `--set key.path=value`; unknown keys are rejected with the list of known ones.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// A config tree being assembled from layers; [`ConfigBuilder::build`] gives the typed config.
pub struct ConfigBuilder<T> {
    tree: toml::Table,
    /// Every key the config has (dotted paths of the defaults' tree).
    known: Vec<String>,
    _type: std::marker::PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> ConfigBuilder<T> {
    /// Starts from `base`; the keys of `schema` (usually the defaults) are the ones accepted.
    /// Keys whose default is absent (an `Option` left `None`) are listed in `extra_keys`.
    pub fn new(base: &T, schema: &T, extra_keys: &[&str]) -> Result<ConfigBuilder<T>> {
        let mut known: Vec<String> = flat_table(&to_table(schema)?).into_keys().collect();
        known.extend(extra_keys.iter().map(|k| k.to_string()));
        known.sort();
        known.dedup();
        Ok(ConfigBuilder { tree: to_table(base)?, known, _type: std::marker::PhantomData })
    }

    /// Merges a `--config` file over the current values.
    pub fn merge_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io { context: format!("reading --config {}", path.display()), source: e })?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::data(path.display().to_string(), e.to_string().trim()))?;
        for (k, v) in flat_table(&table) {
            self.check_key(&k, &path.display().to_string())?;
            self.put(&k, v);
        }
        Ok(())
    }

    /// Sets one key from a command-line flag.
    pub fn flag(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.put(key, value.into());
    }

    /// Removes `key` from the tree (for values resolved after all layers, e.g. a model-dependent
    /// default); it stays a known key.
    pub fn unset(&mut self, key: &str) {
        let parts: Vec<&str> = key.split('.').collect();
        let mut t = &mut self.tree;
        for p in &parts[..parts.len() - 1] {
            match t.get_mut(*p).and_then(|v| v.as_table_mut()) {
                Some(inner) => t = inner,
                None => return,
            }
        }
        t.remove(parts[parts.len() - 1]);
    }

    /// Whether `key` has a value in the tree so far.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` so far.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        let mut parts = key.split('.').peekable();
        let mut t = &self.tree;
        while let Some(p) = parts.next() {
            let v = t.get(p)?;
            if parts.peek().is_none() {
                return Some(v);
            }
            t = v.as_table()?;
        }
        None
    }

    /// Applies `--set key.path=value` (the value is read as TOML, or as a string when it is not
    /// valid TOML: `--set distill.loss=kd`, `--set train.milestones=[100,150]`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let Some((key, raw)) = assignment.split_once('=') else {
            return Err(Error::invalid("--set", format!("'{assignment}' is not key=value (e.g. --set train.lr=0.1)")));
        };
        let key = key.trim();
        self.check_key(key, "--set")?;
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        self.put(key, value);
        Ok(())
    }

    /// The resolved config; type errors name the key.
    pub fn build(self) -> Result<T> {
        T::deserialize(toml::Value::Table(self.tree)).map_err(|e| Error::invalid("config", e.to_string().trim()))
    }

    fn check_key(&self, key: &str, source: &str) -> Result<()> {
        if self.known.iter().any(|k| k == key) {
            return Ok(());
        }
        let last = key.rsplit('.').next().unwrap_or(key);
        let close: Vec<&str> =
            self.known.iter().filter(|k| k.rsplit('.').next() == Some(last)).map(|k| k.as_str()).collect();
        let hint = if close.is_empty() { String::new() } else { format!(" (did you mean {})", close.join(", ")) };
        Err(Error::invalid(
            "config",
            format!("{source}: unknown key '{key}'{hint}; known keys: {}", self.known.join(", ")),
        ))
    }

    fn put(&mut self, key: &str, value: toml::Value) {
        let parts: Vec<&str> = key.split('.').collect();
        let mut t = &mut self.tree;
        for p in &parts[..parts.len() - 1] {
            let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            t = entry.as_table_mut().expect("just made a table");
        }
        t.insert(parts[parts.len() - 1].to_string(), value);
    }
}

/// Reads a TOML config file (e.g. a run's `config.resolved.toml`).
pub fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io { context: format!("reading {}", path.display()), source: e })?;
    toml::from_str(&text).map_err(|e| Error::data(path.display().to_string(), e.to_string().trim()))
}

/// The config as TOML text.
pub fn to_toml<T: Serialize>(cfg: &T) -> Result<String> {
    toml::to_string(cfg).map_err(|e| Error::invalid("config", e.to_string()))
}

pub(crate) fn to_table<T: Serialize>(cfg: &T) -> Result<toml::Table> {
    toml::Table::try_from(cfg).map_err(|e| Error::invalid("config", e.to_string()))
}

pub(crate) fn flat_table(t: &toml::Table) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    flatten("", &toml::Value::Table(t.clone()), &mut out);
    out
}

pub(crate) fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// Keys whose values differ between two configs (ignoring `skip`), as `key: a -> b`.
pub fn differences<T: Serialize>(a: &T, b: &T, skip: &[&str]) -> Result<Vec<String>> {
    let (fa, fb) = (flat_table(&to_table(a)?), flat_table(&to_table(b)?));
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter(|k| !skip.contains(&k.as_str()))
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| {
            let show = |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
            format!("{k}: {} -> {}", show(fa.get(k)), show(fb.get(k)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        lr: f64,
        milestones: Vec<usize>,
    }
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<String>,
        train: Inner,
    }

    fn base() -> Cfg {
        Cfg { model: "resnet20".into(), weights: None, train: Inner { lr: 0.05, milestones: vec![150, 180] } }
    }

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("kdscout-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "model = \"resnet8\"\n[train]\nlr = 0.2\n").unwrap();
        let mut b = ConfigBuilder::new(&base(), &base(), &["weights"]).unwrap();
        b.merge_file(&file).unwrap();
        assert_eq!(b.get("train.lr"), Some(&toml::Value::Float(0.2)));
        b.flag("model", "resnet14");
        b.set("train.milestones=[10, 20]").unwrap();
        b.set("weights=a/b.safetensors").unwrap();
        b.unset("train.lr");
        assert!(!b.has("train.lr"));
        b.flag("train.lr", 0.2);
        let c = b.build().unwrap();
        assert_eq!(c.model, "resnet14");
        assert_eq!(c.train, Inner { lr: 0.2, milestones: vec![10, 20] });
        assert_eq!(c.weights.as_deref(), Some("a/b.safetensors"));

        let mut b = ConfigBuilder::new(&base(), &base(), &[]).unwrap();
        let e = b.set("train.lrr=1").unwrap_err().to_string();
        assert!(e.contains("unknown key 'train.lrr'") && e.contains("train.lr"), "{e}");
        let e = b.set("lr=1").unwrap_err().to_string();
        assert!(e.contains("did you mean train.lr"), "{e}");
        assert!(b.set("no_equals").unwrap_err().to_string().contains("key=value"));
        b.set("train.lr=fast").unwrap();
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("lr"), "{e}");
        std::fs::write(&file, "[train]\nmomentum = 0.9\n").unwrap();
        let mut b = ConfigBuilder::new(&base(), &base(), &[]).unwrap();
        let e = b.merge_file(&file).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("train.momentum"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn differences_name_changed_keys() {
        let a = base();
        let mut b = base();
        b.train.lr = 0.1;
        b.model = "resnet8".into();
        assert_eq!(differences(&a, &b, &["model"]).unwrap(), vec!["train.lr: 0.05 -> 0.1".to_string()]);
        let round: Cfg = toml::from_str(&to_toml(&b).unwrap()).unwrap();
        assert_eq!(round, b);
    }
}
