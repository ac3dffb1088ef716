//! The command line: one file per subcommand; `main.rs` only parses and dispatches.

pub mod demo;

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
}

pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
    }
}
