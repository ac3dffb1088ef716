//! `kdscout train`: train a model on cross-entropy alone (teachers, baselines) with the standard
//! CIFAR recipe, resumable, one run directory per seed. The options shared with `kdscout distill`
//! live here as [`RunArgs`].

use std::path::PathBuf;

use clap::Args;

use crate::config;
use crate::distill::run::{run_seeds, seed_dirs, Resolver, RunConfig, RunOptions};
use crate::{invalid_err, Error, Result};

/// Options of every training run (flattened into `train` and `distill`).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// builtin | cifar10:DIR | cifar100:DIR | synthetic[:CLASSES] [default: builtin]
    #[arg(long)]
    pub data: Option<String>,
    /// Epochs [default: 240].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Initial learning rate [default: 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2].
    #[arg(long)]
    pub lr: Option<f64>,
    /// step (×0.1 after epochs 150/180/210) | cosine [default: step].
    #[arg(long)]
    pub schedule: Option<String>,
    /// The one seed of the run: initialisation, shuffling and augmentation [default: 0].
    #[arg(long, conflicts_with = "seeds", value_parser = super::parse_seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Several seeds, e.g. 0,1,2: one run directory each (OUT/seedN) and mean ± std in
    /// OUT/summary.json.
    #[arg(long)]
    pub seeds: Option<String>,
    /// A TOML file of settings (keys as in config.resolved.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. --set train.milestones=[30,40] (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (default runs/train-MODEL or runs/distill-LOSS-TEACHER-STUDENT).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its checkpoints/latest.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Only print the resolved config and exit.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// The model to train (a name of `kdscout models`, resnet_dXYZ, an NB201 string, a ViT name).
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let seeds: Vec<u64> =
        text.split(',').map(|s| s.trim().parse::<u64>()).collect::<std::result::Result<_, _>>().map_err(|_| {
            Error::invalid("--seeds", format!("'{text}' is not a comma-separated list of seeds, e.g. 0,1,2"))
        })?;
    let mut unique = seeds.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != seeds.len() || seeds.is_empty() {
        invalid_err!("--seeds", "'{text}' must list distinct seeds, e.g. 0,1,2");
    }
    Ok(seeds)
}

/// A stored config to resume from: OUT/config.resolved.toml, or that of OUT's first seed dir.
fn stored_config(args: &RunArgs, seeds: &[u64]) -> Result<Option<RunConfig>> {
    let Some(out) = &args.out else { return Ok(None) };
    if !args.resume {
        return Ok(None);
    }
    let path = seed_dirs(out, seeds)[0].join("config.resolved.toml");
    if path.is_file() {
        Ok(Some(config::parse_file(&path)?))
    } else {
        Ok(None)
    }
}

/// Resolves the config from the layers (`set_flags` adds the command's own flags), then trains
/// every seed.
pub fn execute(distill: bool, args: &RunArgs, set_flags: impl Fn(&mut Resolver) -> Result<()>) -> Result<()> {
    let seeds = match (&args.seeds, args.seed) {
        (Some(s), _) => Some(parse_seeds(s)?),
        (None, Some(s)) => Some(vec![s]),
        (None, None) => None,
    };
    let stored = stored_config(args, seeds.as_deref().unwrap_or(&[0]))?;
    let mut r = Resolver::new(distill, stored.as_ref())?;
    if let Some(path) = &args.config {
        r.file(path)?;
    }
    if let Some(d) = &args.data {
        r.flag("data", d.as_str());
    }
    if let Some(e) = args.epochs {
        r.flag("train.epochs", e as i64);
    }
    if let Some(b) = args.batch {
        r.flag("train.batch_size", b as i64);
    }
    if let Some(lr) = args.lr {
        r.flag("train.lr", lr);
    }
    if let Some(s) = &args.schedule {
        r.flag("train.schedule", s.as_str());
    }
    set_flags(&mut r)?;
    for s in &args.set {
        r.set(s)?;
    }
    if let Some(s) = seeds.as_ref().filter(|s| s.len() == 1) {
        r.flag("seed", s[0] as i64);
    }
    let cfg = r.finish()?;
    let seeds = seeds.unwrap_or_else(|| vec![cfg.seed]);
    let out = args.out.clone().unwrap_or_else(|| cfg.default_out());
    if args.dry_run {
        crate::out!("{}", config::to_toml(&cfg)?);
        return Ok(());
    }
    let dirs = seed_dirs(&out, &seeds);
    let cfgs: Vec<(RunConfig, PathBuf)> =
        seeds.iter().zip(dirs).map(|(&seed, dir)| (RunConfig { seed, ..cfg.clone() }, dir)).collect();
    run_seeds(&cfgs, &out, &RunOptions { resume: args.resume, verbose: true })?;
    Ok(())
}

pub fn run(args: &TrainArgs) -> Result<()> {
    execute(false, &args.run, |r| {
        if let Some(m) = &args.model {
            r.flag("model", m.as_str());
        }
        Ok(())
    })
}
