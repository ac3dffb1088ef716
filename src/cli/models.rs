//! `kdscout models [--json] [--classes N]`: the zoo (`models::ZOO`) with parameters and MACs at
//! 32x32, then the searchable families. `--json` prints JSON Lines: one object per zoo model
//! (`{"name", "classes", "params", "macs"}`), nothing else.

use clap::Args;

use crate::error::{Error, Result};
use crate::models::{self, ModelCost};

#[derive(Args, Debug, Clone)]
pub struct ModelsArgs {
    /// JSON Lines instead of the table: one object per model with name, classes, params, macs.
    #[arg(long)]
    pub json: bool,
    /// Classes of the classifier (the parameter counts depend on it; the KD papers use 100).
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// Show one network instead of the zoo: a searched winner's `best/arch.json` (its class count
    /// is used) ...
    #[arg(long, conflicts_with = "model")]
    pub arch: Option<std::path::PathBuf>,
    /// ... or any name `models::build` accepts (zoo name, resnet_dXYZ, NB201 string, ViT name).
    #[arg(long)]
    pub model: Option<String>,
}

/// `1234567` -> `"1,234,567"`.
pub fn with_commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millions(n: u64) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

pub fn run(args: &ModelsArgs) -> Result<()> {
    if args.classes == 0 {
        return Err(Error::invalid("models", "--classes must be at least 1"));
    }
    let single = match (&args.arch, &args.model) {
        (Some(path), _) => {
            let a = crate::search::run::ArchFile::load(path)?;
            Some((a.arch, a.num_classes))
        }
        (None, Some(name)) => Some((name.clone(), args.classes)),
        (None, None) => None,
    };
    let mut rows: Vec<(&str, ModelCost)> = Vec::with_capacity(models::ZOO.len());
    let classes = single.as_ref().map_or(args.classes, |s| s.1);
    match &single {
        Some((name, classes)) => rows.push((name.as_str(), models::cost(name, *classes)?)),
        None => {
            for &name in models::ZOO {
                rows.push((name, models::cost(name, args.classes)?));
            }
        }
    }
    if args.json {
        for (name, c) in &rows {
            let line = serde_json::json!({"name": name, "classes": classes, "params": c.params, "macs": c.macs});
            crate::outln!("{line}");
        }
        return Ok(());
    }
    let w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    crate::outln!(
        "{} model(s) for 32x32 inputs, {} classes (MACs = the \"FLOPs\" of the KD papers)",
        rows.len(),
        classes
    );
    crate::outln!("{:<w$}  {:>12}  {:>7}  {:>14}  {:>8}", "model", "params", "", "MACs", "");
    for (name, c) in &rows {
        crate::outln!(
            "{name:<w$}  {:>12}  {:>7}  {:>14}  {:>8}",
            with_commas(c.params as u64),
            millions(c.params as u64),
            with_commas(c.macs),
            millions(c.macs)
        );
    }
    if single.is_some() {
        return Ok(());
    }
    let lo = models::cost("resnet_d111", args.classes)?;
    let hi = models::cost("resnet_d777", args.classes)?;
    crate::outln!();
    crate::outln!("families, built by name:");
    crate::outln!(
        "  resnet_dXYZ  DisWOT depth space: ResNet-20 (widths 16/16/32/64) with X, Y, Z blocks per stage, each in \
         {{1,3,5,7}}; 64 nets from resnet_d111 ({} params, {} MACs) to resnet_d777 ({} params, {} MACs)",
        millions(lo.params as u64),
        millions(lo.macs),
        millions(hi.params as u64),
        millions(hi.macs)
    );
    crate::outln!(
        "  NAS-Bench-201  cells written |op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops none, skip_connect, \
         nor_conv_1x1, nor_conv_3x3, avg_pool_3x3 (C=16, N=5; 15,625 cells)"
    );
    crate::outln!(
        "  ViT  a small ViT for 32x32 inputs (patch 4, class token) with depth, embed dim, heads and MLP ratio \
         per layer (the AutoFormer-style space)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn commas() {
        assert_eq!(super::with_commas(0), "0");
        assert_eq!(super::with_commas(999), "999");
        assert_eq!(super::with_commas(1000), "1,000");
        assert_eq!(super::with_commas(23_710_000), "23,710,000");
    }
}
