//! A training run's directory: `config.resolved.toml`, `metrics.csv` (one row per epoch),
//! `plots/curve.{svg,png}`, and safetensors checkpoints written atomically after every epoch:
//! `checkpoints/latest.safetensors`, `checkpoints/best.safetensors` (best test top-1) and
//! `checkpoints/epoch_NNNN.safetensors` every `save_every` epochs.
//!
//! A checkpoint holds the student (`student.*`, PyTorch names after the prefix), the distiller's
//! trainable parts (`distiller.*`), the SGD momentum buffers (`optim.student.*`,
//! `optim.distiller.*`) and, in the header metadata, `kdscout_checkpoint = "train-state"`, the
//! model name and class count, and `train_state`: the epoch, the RNG position, the best epoch and
//! the history of epoch records as JSON. [`load_weights`] reads the student out of such a file
//! (or a plain model file), so a trained teacher's `best.safetensors` is a valid
//! `--teacher-weights`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::trainer::{TrainState, Trainer};
use crate::error::io_err;
use crate::models::Network;
use crate::train::EpochRecord;
use crate::weights::{self, Checkpoint};
use crate::{Error, Result};

/// Metadata key marking a full training-state checkpoint (value [`TRAIN_STATE`]).
pub const META_KIND: &str = "kdscout_checkpoint";
pub const TRAIN_STATE: &str = "train-state";
/// Metadata key of the JSON [`TrainState`].
pub const META_STATE: &str = "train_state";

/// The header of `metrics.csv`.
pub const METRICS_HEADER: &str = "epoch,lr,train_loss,train_top1,test_loss,test_top1,test_top5,seconds";

/// One `metrics.csv` row.
pub fn metrics_row(r: &EpochRecord) -> String {
    format!(
        "{},{},{:.6},{:.4},{:.6},{:.4},{:.4},{:.3}",
        r.epoch,
        r.lr,
        r.train.loss,
        r.train.top1,
        r.test.loss,
        r.test.top1,
        r.test.top5,
        r.train.seconds + r.test.seconds
    )
}

/// The files of one run.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// Creates the folder (and `checkpoints/`, `plots/`) if needed.
    pub fn create(root: impl Into<PathBuf>) -> Result<RunDir> {
        let root = root.into();
        for d in [root.clone(), root.join("checkpoints"), root.join("plots")] {
            std::fs::create_dir_all(&d).map_err(io_err(format!("creating run directory {}", d.display())))?;
        }
        Ok(RunDir { root })
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.resolved.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    pub fn latest(&self) -> PathBuf {
        self.root.join("checkpoints").join("latest.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.root.join("checkpoints").join("best.safetensors")
    }
    pub fn periodic(&self, epoch: usize) -> PathBuf {
        self.root.join("checkpoints").join(format!("epoch_{epoch:04}.safetensors"))
    }
    pub fn plot(&self, ext: &str) -> PathBuf {
        self.root.join("plots").join(format!("curve.{ext}"))
    }

    /// Writes the trainer's full state to `latest` (always), `best` (when `is_best`) and the
    /// periodic file (every `save_every` epochs), each atomically. `extra` joins the metadata
    /// (teacher, loss, ...).
    pub fn save(&self, tr: &Trainer, model: &str, is_best: bool, extra: &BTreeMap<String, String>) -> Result<()> {
        let mut meta = weights::model_metadata(model, tr.student.num_classes());
        meta.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        meta.insert(META_KIND.into(), TRAIN_STATE.into());
        let state = serde_json::to_string(&tr.state()).map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
        meta.insert(META_STATE.into(), state);
        let bytes = weights::to_safetensors_bytes(&tr.state_tensors(), &meta)?;
        weights::write_atomic(&self.latest(), &bytes)?;
        if is_best {
            weights::write_atomic(&self.best(), &bytes)?;
        }
        let every = tr.recipe.save_every;
        if every > 0 && tr.epoch.is_multiple_of(every) {
            weights::write_atomic(&self.periodic(tr.epoch), &bytes)?;
        }
        Ok(())
    }

    /// Appends one row to `metrics.csv` (with the header first if the file is new) and flushes.
    pub fn append_metrics(&self, r: &EpochRecord) -> Result<()> {
        let path = self.metrics();
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let mut text = String::new();
        if new {
            text.push_str(METRICS_HEADER);
            text.push('\n');
        }
        text.push_str(&metrics_row(r));
        text.push('\n');
        f.write_all(text.as_bytes()).and_then(|_| f.flush()).map_err(io_err(format!("appending to {}", path.display())))
    }

    /// Rewrites `metrics.csv` from a history (on resume: rows of epochs the checkpoint does not
    /// hold are dropped, missing ones restored).
    pub fn rewrite_metrics(&self, history: &[EpochRecord]) -> Result<()> {
        let mut text = format!("{METRICS_HEADER}\n");
        for r in history {
            text.push_str(&metrics_row(r));
            text.push('\n');
        }
        weights::write_atomic(&self.metrics(), text.as_bytes())
    }
}

/// Reads a training-state checkpoint: its tensors and [`TrainState`].
pub fn load_state(path: &Path) -> Result<(Checkpoint, TrainState)> {
    let ckpt = weights::load(path)?;
    if ckpt.metadata.get(META_KIND).map(String::as_str) != Some(TRAIN_STATE) {
        return Err(Error::data(
            path.display().to_string(),
            "is not a kdscout training checkpoint (no train-state metadata): resume from a run's checkpoints/latest.safetensors",
        ));
    }
    let json =
        ckpt.metadata.get(META_STATE).ok_or_else(|| Error::data(path.display().to_string(), "no train_state"))?;
    let state: TrainState = serde_json::from_str(json)
        .map_err(|e| Error::data(path.display().to_string(), format!("damaged train_state metadata: {e}")))?;
    Ok((ckpt, state))
}

/// Loads weights into `net` from a plain model file (`kdscout import-weights`, `save_module`) or
/// from the student of a training checkpoint (`checkpoints/best.safetensors`), strictly: every
/// name and shape must fit. Errors name the file and the model it was saved from.
pub fn load_weights(net: &dyn Network, path: &Path) -> Result<()> {
    let ckpt = weights::load(path)?;
    let tensors: Vec<(String, crate::Tensor)> = if ckpt.metadata.get(META_KIND).map(String::as_str) == Some(TRAIN_STATE)
    {
        ckpt.tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix("student.").map(|n| (n.to_string(), t.clone())))
            .collect()
    } else {
        ckpt.tensors.clone()
    };
    net.load_state_dict(&tensors, true).map(|_| ()).map_err(|e| {
        let saved = ckpt.model().map(|m| format!(" (it was saved from model {m})")).unwrap_or_default();
        Error::data(path.display().to_string(), format!("does not fit this model{saved}: {e}"))
    })
}

/// Loads a teacher's trained weights ([`load_weights`]) and refuses non-finite values: a damaged
/// or diverged teacher would train students on NaN targets, and count NaN logits as hits.
pub fn load_teacher_weights(net: &dyn Network, path: &Path) -> Result<()> {
    load_weights(net, path).map_err(|e| Error::invalid("--teacher-weights", e.to_string()))?;
    for (name, t) in net.state_dict() {
        let bad = t.to_vec()?.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::data(
                path.display().to_string(),
                format!(
                    "teacher tensor {name} holds {bad} non-finite values (NaN or inf): the weights are damaged or \
                     come from a diverged run; give a good checkpoint with --teacher-weights"
                ),
            ));
        }
    }
    Ok(())
}
