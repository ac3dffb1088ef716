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
    /// Distillation loss; --list-losses shows them with their weights [default: kd].
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

/// A `torch.save` file: a zip (torch >= 1.6) or a legacy pickle (starts with the pickle protocol
/// opcode 0x80), or simply named .pth/.pt.
fn is_pytorch_checkpoint(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let named = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    named || (read == 4 && (&head == b"PK\x03\x04" || head[0] == 0x80))
}

pub fn run(args: &DistillArgs) -> Result<()> {
    if args.list_losses {
        for l in crate::distill::LOSSES {
            let w = l.weights;
            crate::outln!("{:<8} gamma {:<5} alpha {:<5} beta {:<7} {}", l.name, w.gamma, w.alpha, w.beta, l.source);
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
        if is_pytorch_checkpoint(w) {
            let model = args.teacher.as_deref().unwrap_or("TEACHER");
            invalid_err!(
                "--teacher-weights",
                "{} is a PyTorch checkpoint (torch.save); convert it once with `kdscout import-weights {} \
                 teacher.safetensors --model {model}` (which checks every name and shape) and pass \
                 --teacher-weights teacher.safetensors",
                w.display(),
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
