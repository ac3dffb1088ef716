//! `kdscout import-weights IN.pth OUT.safetensors --model NAME [--classes N]`: reads a PyTorch
//! checkpoint (zip format, or safetensors), checks every name and shape against the zoo model and
//! writes a kdscout safetensors checkpoint.

use std::path::PathBuf;

use clap::Args;

use crate::distill::checkpoint;
use crate::error::{Error, Result};
use crate::models::{self, Network};
use crate::rng::Rng;
use crate::weights::{self, pth};
use crate::{Device, Tensor};

#[derive(Args, Debug, Clone)]
pub struct ImportWeightsArgs {
    /// PyTorch checkpoint written by torch.save (torch >= 1.6 zip format), or a safetensors file.
    pub input: PathBuf,
    /// Where to write the kdscout checkpoint (safetensors).
    pub output: PathBuf,
    /// Zoo model the weights belong to (see `kdscout models`).
    #[arg(long)]
    pub model: String,
    /// Classes of the classifier; by default read from the checkpoint's classifier weight.
    #[arg(long)]
    pub classes: Option<usize>,
}

fn build(name: &str, classes: usize) -> Result<Box<dyn Network>> {
    models::build(name, classes, &mut Rng::seed(0), Device::Cpu)
}

/// Name of the classifier weight in the network's state dict (e.g. `fc.weight`).
fn classifier_weight_name(net: &dyn Network) -> Option<String> {
    let id = net.classifier().weight.id();
    net.state_dict().into_iter().find(|(_, t)| t.id() == id).map(|(n, _)| n)
}

pub fn run(args: &ImportWeightsArgs) -> Result<()> {
    let input = args.input.display().to_string();
    let imported = pth::read_state_dict(&args.input)?;
    let mut state = imported.tensors;
    // A kdscout training checkpoint (train/distill `checkpoints/*.safetensors`) holds the student
    // under `student.` beside the distiller and optimiser state: import its student.
    let train_state = weights::load(&args.input)
        .ok()
        .filter(|c| c.metadata.get(checkpoint::META_KIND).map(String::as_str) == Some(checkpoint::TRAIN_STATE));
    if let Some(ckpt) = &train_state {
        state = ckpt
            .tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix("student.").map(|n| (n.to_string(), t.clone())))
            .collect();
        crate::outln!(
            "{input} is a kdscout training checkpoint (model {}): importing its student (student.*), leaving \
             the distiller and optimiser state; it can also be passed to --teacher-weights as it is",
            ckpt.model().unwrap_or("unknown")
        );
    }
    let stripped = if imported.stripped > 0 {
        format!(" (\"module.\" prefix stripped from {} names)", imported.stripped)
    } else {
        String::new()
    };
    let ignored =
        if imported.ignored.is_empty() { String::new() } else { format!("; ignored: {}", imported.ignored.join(", ")) };
    crate::outln!("read {input}: {} tensors {}{stripped}{ignored}", state.len(), imported.location);

    // The class count: given, or the rows of the checkpoint's classifier weight.
    let mut net = build(&args.model, args.classes.unwrap_or(100))?;
    let fc = classifier_weight_name(net.as_ref());
    let mut classes_note = "given";
    if args.classes.is_none() {
        let rows = fc.as_ref().and_then(|fc| state.iter().find(|(n, _)| n == fc)).and_then(|(_, t)| t.dims().first());
        match rows {
            Some(&rows) if rows > 0 => {
                if rows != net.num_classes() {
                    net = build(&args.model, rows)?;
                }
                classes_note = "from the checkpoint's classifier";
            }
            _ => classes_note = "default; the checkpoint has no classifier weight under this model's name",
        }
    }
    let classes = net.num_classes();

    // PyTorch < 0.4.1 had no num_batches_tracked; PyTorch loads such files with the counter at 0.
    let own = net.state_dict();
    let missing_counters: Vec<String> = own
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with("num_batches_tracked") && !state.iter().any(|(s, _)| s == *n))
        .cloned()
        .collect();
    for n in &missing_counters {
        state.push((n.clone(), Tensor::scalar(0.0, Device::Cpu)?));
    }

    net.load_state_dict(&state, true).map_err(|e| {
        let mut detail = format!("does not fit {} ({classes} classes, {classes_note}): {e}", args.model);
        if let Some((fc, got)) =
            fc.as_ref().and_then(|fc| state.iter().find(|(n, _)| n == fc)).map(|(n, t)| (n, t.dims().to_vec()))
        {
            if got.first().is_some_and(|&r| r != classes) {
                detail.push_str(&format!("; the checkpoint's {fc} has {} rows: pass --classes {}", got[0], got[0]));
            }
        }
        Error::data(&input, detail)
    })?;
    let params = net.num_parameters();
    crate::outln!(
        "checked against {} ({classes} classes, {classes_note}): all {} names and shapes match{}",
        args.model,
        own.len(),
        if missing_counters.is_empty() {
            String::new()
        } else {
            format!(" ({} num_batches_tracked entries absent, set to 0 as PyTorch does)", missing_counters.len())
        }
    );
    let mut meta = weights::model_metadata(&args.model, classes);
    if let Some(name) = args.input.file_name() {
        meta.insert("source".into(), name.to_string_lossy().into_owned());
    }
    weights::save(&args.output, &net.state_dict(), &meta)?;
    crate::outln!("wrote {} ({params} parameters, {} tensors)", args.output.display(), own.len());
    Ok(())
}
