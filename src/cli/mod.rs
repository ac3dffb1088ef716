//! The command line: one file per subcommand; `main.rs` only parses and dispatches.

pub mod correlate;
pub mod data;
pub mod demo;
pub mod distill;
pub mod import_weights;
pub mod models;
pub mod output;
pub mod score;
pub mod search;
pub mod train;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kdscout", version, about = "Training-free knowledge-distillation search")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a small conv net on the shipped CIFAR-10 subset and report test accuracy
    /// (the engine's end-to-end check; later stages add search and distillation).
    Demo(demo::DemoArgs),
    /// Load a data source (default: the CIFAR-10 images built into the binary), check every file
    /// and print split sizes and class counts.
    Data(data::DataArgs),
    /// List the model zoo with parameters and MACs (FLOPs) at 32x32.
    Models(models::ModelsArgs),
    /// Convert a PyTorch checkpoint (.pth, zip format) of a zoo model to a kdscout safetensors file,
    /// checking every name and shape.
    ImportWeights(import_weights::ImportWeightsArgs),
    /// Score students against a teacher without training (DisWOT and the zero-cost proxies), on
    /// one real batch; `--candidates FILE` streams many into results.jsonl.
    Score(score::ScoreArgs),
    /// Rank agreement (Spearman, Kendall tau-b, Pearson, precision@k) of scores with ground truth.
    Correlate(correlate::CorrelateArgs),
    /// Search a space for the student the proxy scores best against the teacher (resumable).
    Search(Box<search::SearchArgs>),
    /// Join the results of `search --shard i/n` runs.
    Merge(search::MergeArgs),
    /// Train a model on cross-entropy (teachers, baselines) with the standard CIFAR recipe;
    /// checkpoints, metrics.csv and a training curve in the run directory; --resume continues.
    Train(train::TrainArgs),
    /// Distil a student from a trained teacher with a KD loss (kd, fitnet, at, ..., --list-losses).
    Distill(distill::DistillArgs),
}

/// `--seed`'s parser: a whole number in 0..=2^64-1, with a message that says so for a negative
/// or fractional value (clap would otherwise take `-1` for an unknown flag).
pub fn parse_seed(text: &str) -> std::result::Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        let why = if text.trim().starts_with('-') { "seeds cannot be negative" } else { "not a whole number" };
        format!("'{text}': {why}; give a seed in 0..={} (e.g. --seed 0)", u64::MAX)
    })
}

pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Models(args) => models::run(&args),
        Command::ImportWeights(args) => import_weights::run(&args),
        Command::Score(args) => score::run(&args),
        Command::Correlate(args) => correlate::run(&args),
        Command::Search(args) => search::run(&args),
        Command::Merge(args) => search::merge(&args),
        Command::Train(args) => train::run(&args),
        Command::Distill(args) => distill::run(&args),
    }
}
