//! The small real CIFAR files in the project's `shared/data` folder (tests, examples, the built-in
//! default batch).

use super::{Dataset, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Environment variable naming the shared data folder explicitly.
pub const SHARED_DATA_ENV: &str = "KDSCOUT_SHARED_DATA";

const CIFAR10_TRAIN: &str = "cifar10/data_batch_1_first4000.bin";
const CIFAR10_TEST: &str = "cifar10/test_batch_first1000.bin";
const CIFAR10_META: &str = "cifar10/batches.meta.txt";
const CIFAR100_SAMPLE: &str = "test_first20_foolbox.bin";

/// Folders that may hold `shared/data`: `$KDSCOUT_SHARED_DATA` alone if set; otherwise
/// `shared/data` under every ancestor of the crate and of the current dir (so a git worktree
/// nested deeper than the main checkout still finds it).
fn candidates() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(SHARED_DATA_ENV) {
        return vec![PathBuf::from(dir)];
    }
    let mut out = Vec::new();
    let mut starts = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for start in starts {
        for anc in start.ancestors().skip(1) {
            let c = anc.join("shared").join("data");
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The shared data folder: the first candidate that exists.
pub fn shared_data_dir() -> Result<PathBuf> {
    let cands = candidates();
    cands.iter().find(|c| c.is_dir()).cloned().ok_or_else(|| not_found(&cands, "shared/data"))
}

fn not_found(cands: &[PathBuf], what: &str) -> Error {
    let list: Vec<String> = cands.iter().map(|c| c.display().to_string()).collect();
    Error::data(
        what,
        format!(
            "shared data not found (looked in: {}); set {SHARED_DATA_ENV} to the folder holding cifar10/ and {CIFAR100_SAMPLE}",
            list.join(", ")
        ),
    )
}

/// Path of a file under the shared data folder: the first candidate folder that has it.
fn shared_file(rel: &str) -> Result<PathBuf> {
    let cands = candidates();
    cands.iter().map(|c| c.join(rel)).find(|p| p.is_file()).ok_or_else(|| not_found(&cands, rel))
}

/// CIFAR-10 class names from `cifar10/batches.meta.txt`.
pub fn shared_cifar10_class_names() -> Result<Vec<String>> {
    let path = shared_file(CIFAR10_META)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::data(path.display().to_string(), e.to_string()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

impl Dataset {
    /// The shared real CIFAR-10 subset: train = first 4000 images of `data_batch_1`, test = first
    /// 1000 test images.
    pub fn shared_cifar10(split: Split) -> Result<Dataset> {
        let rel = match split {
            Split::Train => CIFAR10_TRAIN,
            Split::Test => CIFAR10_TEST,
        };
        let mut d = Dataset::read_cifar10_file(shared_file(rel)?)?;
        d.name = format!("cifar10-{}-shared", split.as_str());
        Ok(d)
    }

    /// The 20 shared CIFAR-100 test images (fine labels if `fine`, else coarse).
    pub fn shared_cifar100_sample(fine: bool) -> Result<Dataset> {
        let mut d = Dataset::read_cifar100_file(shared_file(CIFAR100_SAMPLE)?, fine)?;
        d.name = "cifar100-test-shared".into();
        Ok(d)
    }

    /// Where a shared file would be read from (for messages and tools).
    pub fn shared_path(rel: impl AsRef<Path>) -> Result<PathBuf> {
        shared_file(&rel.as_ref().to_string_lossy())
    }
}
