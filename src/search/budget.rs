//! The user's budget: limits on parameters, FLOPs (MACs) and depth, checked from the genome
//! before a candidate is built or scored.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::space::{Genome, SearchSpace};
use crate::models::ModelCost;
use crate::{Error, Result};

/// A count written the way people write budgets: `1000000`, `1M`, `1.5M`, `300k`, `2G`
/// (decimal multipliers). 0 means "no limit" where a limit is meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count(pub u64);

impl Count {
    /// Parses `text`; errors name `what` (the option or key the text came from).
    pub fn parse(text: &str, what: &str) -> Result<Count> {
        let t = text.trim().replace('_', "");
        let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
            Some('K') => (&t[..t.len() - 1], 1e3),
            Some('M') => (&t[..t.len() - 1], 1e6),
            Some('G') => (&t[..t.len() - 1], 1e9),
            _ => (&t[..], 1.0),
        };
        let bad = || {
            let why = if t.starts_with('-') { "a budget cannot be negative (0 means none)" } else { "not a count" };
            Error::invalid(
                "budget",
                format!(
                    "{what}: '{text}': {why}; write a whole number or one with a k/M/G suffix (e.g. 1M, 1.5M, 300k)"
                ),
            )
        };
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult as u64).map(Count).ok_or_else(bad);
        }
        let v: f64 = num.parse().map_err(|_| bad())?;
        let total = v * mult;
        if !total.is_finite() || total < 0.0 || total > u64::MAX as f64 || total.fract() != 0.0 {
            return Err(bad());
        }
        Ok(Count(total as u64))
    }

    /// `None` for 0 ("no limit").
    pub fn limit(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1_000_000 && n.is_multiple_of(10_000) {
            write!(f, "{}M", n as f64 / 1e6)
        } else if n >= 1_000 && n.is_multiple_of(10) {
            write!(f, "{}k", n as f64 / 1e3)
        } else {
            write!(f, "{n}")
        }
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Count, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Count(n)),
            Raw::Float(v) => Count::parse(&v.to_string(), "count").map_err(serde::de::Error::custom),
            Raw::Text(t) => Count::parse(&t, "count").map_err(serde::de::Error::custom),
        }
    }
}

/// Limits a candidate must meet before it is scored (0 = no limit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Trainable parameters, at the run's class count.
    #[serde(default)]
    pub max_params: Count,
    /// Multiply-accumulates of one 32x32 image (the papers' "FLOPs").
    #[serde(default)]
    pub max_flops: Count,
    /// The space's depth measure ([`SearchSpace::layers`]).
    #[serde(default)]
    pub max_layers: usize,
}

/// A candidate's size, computed from its genome.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub cost: ModelCost,
    pub layers: usize,
    /// Why the candidate is over budget, or None when it fits.
    pub violation: Option<String>,
}

impl Constraints {
    pub fn check(&self, space: &dyn SearchSpace, g: &Genome, num_classes: usize) -> Checked {
        let cost = space.cost(g, num_classes);
        let layers = space.layers(g);
        let mut over = Vec::new();
        if let Some(m) = self.max_params.limit() {
            if cost.params as u64 > m {
                over.push(format!("{} params > max_params {}", cost.params, m));
            }
        }
        if let Some(m) = self.max_flops.limit() {
            if cost.macs > m {
                over.push(format!("{} MACs > max_flops {}", cost.macs, m));
            }
        }
        if self.max_layers > 0 && layers > self.max_layers {
            over.push(format!("{layers} layers > max_layers {}", self.max_layers));
        }
        Checked { cost, layers, violation: (!over.is_empty()).then(|| over.join(", ")) }
    }

    pub fn is_unlimited(&self) -> bool {
        self.max_params.0 == 0 && self.max_flops.0 == 0 && self.max_layers == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_with_suffixes_and_reject_junk() {
        for (text, want) in [("1M", 1_000_000), ("1.5M", 1_500_000), ("300k", 300_000), ("2G", 2_000_000_000)] {
            assert_eq!(Count::parse(text, "t").unwrap(), Count(want), "{text}");
        }
        assert_eq!(Count::parse("1_000", "t").unwrap(), Count(1000));
        assert_eq!(Count::parse("0", "t").unwrap().limit(), None);
        for junk in ["", "M", "1.2.3M", "-1M", "1.0000001k", "abc"] {
            let e = Count::parse(junk, "--max-params").unwrap_err().to_string();
            assert!(e.contains("--max-params"), "{junk}: {e}");
        }
        let c: Constraints = toml::from_str("max_params = \"1M\"\nmax_flops = 100000000").unwrap();
        assert_eq!((c.max_params, c.max_flops), (Count(1_000_000), Count(100_000_000)));
        assert_eq!(toml::to_string(&c).unwrap(), "max_params = 1000000\nmax_flops = 100000000\nmax_layers = 0\n");
        assert!(toml::from_str::<Constraints>("max_param = 1").is_err());
    }
}
