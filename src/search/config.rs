//! The search run's configuration: defaults, then `--config run.toml`, then command-line flags,
//! then `--set key.path=value`, resolved into one [`SearchConfig`] that is written to
//! `config.resolved.toml` and compared key by key when a run is resumed.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::algo::{AlgoConfig, AlgoKind, Shard};
use super::budget::Constraints;
use crate::proxy::InitMode;
use crate::{Error, Result};

/// Everything that determines a search run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// The version that wrote the file (not compared on resume).
    pub kdscout_version: String,
    /// `nb201`, `resnet_d`, `resnet` or `vit`.
    pub space: String,
    /// Teacher model name, or "none" for proxies that need no teacher.
    pub teacher: String,
    /// The teacher's trained weights (a kdscout model file or training checkpoint); empty: a
    /// randomly initialised teacher from the run seed.
    pub teacher_weights: String,
    /// SHA-256 of `teacher_weights`, filled in when the config is resolved: a resumed run
    /// identifies its teacher by content (the same file elsewhere is accepted, a swapped one
    /// refused).
    pub teacher_weights_sha256: String,
    /// The proxy whose score the search maximises (its sign is taken from the proxy registry).
    pub proxy: String,
    pub algo: AlgoKind,
    pub seed: u64,
    /// Distinct candidates to score (0 = the whole enumeration, exhaustive only).
    pub evaluations: u64,
    /// Scoring images: `builtin` (the CIFAR-10 images in the binary), `synthetic[:N]`,
    /// `cifar10:DIR` or `cifar100:DIR` (training split).
    pub data: String,
    pub batch_size: usize,
    pub init: InitMode,
    pub constraints: Constraints,
    pub search: AlgoConfig,
    pub shard: Shard,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            kdscout_version: env!("CARGO_PKG_VERSION").into(),
            space: "nb201".into(),
            teacher: "resnet56".into(),
            teacher_weights: String::new(),
            teacher_weights_sha256: String::new(),
            proxy: "diswot".into(),
            algo: AlgoKind::Aging,
            seed: 0,
            evaluations: 1000,
            data: "builtin".into(),
            batch_size: 64,
            init: InitMode::Default,
            constraints: Constraints::default(),
            search: AlgoConfig::default(),
            shard: Shard::default(),
        }
    }
}

/// Keys that may differ between a run and its resumption (or between shards being merged).
pub const NOT_COMPARED: &[&str] = &["kdscout_version"];

impl SearchConfig {
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::invalid("config", format!("cannot write the config: {e}")))
    }

    pub fn teacher_name(&self) -> Option<&str> {
        (!self.teacher.is_empty() && self.teacher != "none").then_some(self.teacher.as_str())
    }

    /// Where the teacher comes from, if the run has one.
    pub fn teacher_source(&self) -> Option<crate::proxy::run::TeacherSource<'_>> {
        self.teacher_name().map(|name| crate::proxy::run::TeacherSource {
            name,
            weights: (!self.teacher_weights.is_empty()).then(|| Path::new(self.teacher_weights.as_str())),
        })
    }

    /// Fills in `teacher_weights_sha256` from the file (after all layers are applied).
    pub fn hash_teacher_weights(&mut self) -> Result<()> {
        self.teacher_weights_sha256 = if self.teacher_weights.is_empty() {
            String::new()
        } else {
            let path = Path::new(&self.teacher_weights);
            if !path.is_file() {
                return Err(Error::invalid(
                    "--teacher-weights",
                    format!("{} is not a file: give the teacher's weights with their current path", path.display()),
                ));
            }
            crate::weights::sha256_file(path)?
        };
        Ok(())
    }
}

/// The layered builder of a search config (defaults or a stored run, `--config`, flags, `--set`).
pub type ConfigBuilder = crate::config::ConfigBuilder<SearchConfig>;

/// A builder starting from `base` (the defaults, or a stored run's config) that accepts the keys
/// of the default search config.
pub fn builder(base: &SearchConfig) -> Result<ConfigBuilder> {
    ConfigBuilder::new(base, &SearchConfig::default(), &[])
}

/// Reads a `config.resolved.toml`.
pub fn parse_file(path: &Path) -> Result<SearchConfig> {
    crate::config::parse_file(path)
}

/// Keys whose values differ between two configs (ignoring `skip` and the keys never compared),
/// as `key: a -> b`.
pub fn differences(a: &SearchConfig, b: &SearchConfig, skip: &[&str]) -> Result<Vec<String>> {
    let skip: Vec<&str> = skip.iter().chain(NOT_COMPARED).copied().collect();
    crate::config::differences(a, b, &skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Count;

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_named() {
        let mut b = builder(&SearchConfig::default()).unwrap();
        b.flag("space", toml::Value::String("resnet_d".into()));
        b.set("constraints.max_params=\"1M\"").unwrap();
        b.set("search.population = 50").unwrap();
        b.set("algo=random").unwrap();
        let c = b.build().unwrap();
        assert_eq!((c.space.as_str(), c.search.population, c.algo), ("resnet_d", 50, AlgoKind::Random));
        assert_eq!(c.constraints.max_params, Count(1_000_000));

        let mut b = builder(&SearchConfig::default()).unwrap();
        let e = b.set("search.populaton=3").unwrap_err().to_string();
        assert!(e.contains("unknown key 'search.populaton'") && e.contains("search.population"), "{e}");
        let e = b.set("no_equals").unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
        b.set("search.population=many").unwrap();
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("population"), "{e}");

        let mut b = builder(&SearchConfig::default()).unwrap();
        b.set("algo=annealing").unwrap();
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("algo") && e.contains("annealing"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips_and_differences_name_keys() {
        let c = SearchConfig { seed: 3, ..Default::default() };
        let back: SearchConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
        let mut d = c.clone();
        d.search.sample = 4;
        d.kdscout_version = "9.9.9".into();
        assert_eq!(differences(&c, &d, &[]).unwrap(), vec!["search.sample: 8 -> 4".to_string()]);
        assert!(differences(&c, &d, &["search.sample"]).unwrap().is_empty());
    }
}
