//! `kdscout distill`: train a student against a frozen teacher with one of the distillation
//! losses (`--loss kd`, ...), on the same recipe, run directories and resume as `kdscout train`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::train::{execute, RunArgs};
use crate::{invalid_err, Error, Result};

#[derive(Args, Debug, Clone)]
pub struct DistillArgs {
    /// Teacher model name.
    #[arg(long)]
    pub teacher: Option<String>,
    /// The teacher's trained weights: a `kdscout train` checkpoint (checkpoints/best.safetensors)
    /// or a model file from `kdscout import-weights`.
    #[arg(long)]
    pub teacher_weights: Option<PathBuf>,
    /// Student model name.
    #[arg(long, conflicts_with = "arch")]
    pub student: Option<String>,
    /// A searched student: a JSON file with a "genome" (or "arch") string, e.g. runs/X/best/arch.json.
    #[arg(long)]
    pub arch: Option<PathBuf>,
    /// Distillation loss (default kd); --list-losses shows them with their weights.
    #[arg(long)]
    pub loss: Option<String>,
    /// List the losses and exit.
    #[arg(long)]
    pub list_losses: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The model string of an `arch.json` (`genome`, or `arch`).
pub fn read_arch(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io { context: format!("reading --arch {}", path.display()), source: e })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::data(path.display().to_string(), format!("not JSON ({e}): --arch takes an arch.json file"))
    })?;
    for key in ["genome", "arch"] {
        if let Some(s) = v.get(key).and_then(|g| g.as_str()) {
            return Ok(s.to_string());
        }
    }
    Err(Error::data(
        path.display().to_string(),
        "has no \"genome\" or \"arch\" string: write {\"genome\": \"resnet_d357\"} or pass --student NAME",
    ))
}

pub fn run(args: &DistillArgs) -> Result<()> {
    if args.list_losses {
        for l in crate::distill::LOSSES {
            let w = l.weights;
            println!("{:<8} gamma {:<5} alpha {:<5} beta {:<7} {}", l.name, w.gamma, w.alpha, w.beta, l.source);
        }
        return Ok(());
    }
    if let Some(w) = &args.teacher_weights {
        if !w.is_file() {
            invalid_err!(
                "--teacher-weights",
                "{} does not exist: give the teacher's trained weights file",
                w.display()
            );
        }
    }
    let student = match (&args.student, &args.arch) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(a)) => Some(read_arch(a)?),
        _ => None,
    };
    execute(true, &args.run, |r| {
        if let Some(m) = &student {
            r.flag("model", m.as_str());
        }
        if let Some(t) = &args.teacher {
            r.flag("distill.teacher", t.as_str());
        }
        if let Some(w) = &args.teacher_weights {
            r.flag("distill.teacher_weights", w.display().to_string());
        }
        if let Some(l) = &args.loss {
            crate::distill::info(l).map_err(|e| Error::invalid("--loss", e.to_string()))?;
            r.flag("distill.loss", l.as_str());
        }
        Ok(())
    })
}
