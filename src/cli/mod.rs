//! The command line: one file per subcommand; `main.rs` only parses and dispatches.

pub mod demo;
pub mod search;

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
    /// Search a space for the student the proxy scores best against the teacher (resumable).
    Search(Box<search::SearchArgs>),
    /// Join the results of `search --shard i/n` runs.
    Merge(search::MergeArgs),
}

pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Search(args) => search::run(&args),
        Command::Merge(args) => search::merge(&args),
    }
}
