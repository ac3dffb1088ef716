//! CIFAR binary readers. Every malformed input becomes an `Error::Data` naming the file and the fix.

use super::{Dataset, Normalize, Split, IMAGE_BYTES};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// One CIFAR-10 record: label byte + pixels.
pub const CIFAR10_RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// One CIFAR-100 record: coarse label byte + fine label byte + pixels.
pub const CIFAR100_RECORD_BYTES: usize = 2 + IMAGE_BYTES;

const CIFAR10_TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const CIFAR10_TEST_FILES: [&str; 1] = ["test_batch.bin"];
const CIFAR10_FOLDER_NEEDS: &str =
    "a CIFAR-10 folder (cifar-10-batches-bin/) must contain data_batch_1.bin .. data_batch_5.bin and test_batch.bin";
const CIFAR100_FOLDER_NEEDS: &str = "a CIFAR-100 folder (cifar-100-binary/) must contain train.bin and test.bin";

fn show(path: &Path) -> String {
    path.display().to_string()
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Reads the whole file (the parsers check its size).
fn read_file(path: &Path, kind: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("file not found (expected a {kind} binary batch file)")
            }
            _ => format!("cannot read {kind} file: {e}"),
        };
        Error::data(show(path), hint)
    })?;
    Ok(bytes)
}

/// Checks `bytes` (named `source` in errors) are a non-empty whole number of `record` bytes.
fn check_records(bytes: &[u8], record: usize, kind: &str, source: &str) -> Result<()> {
    if bytes.is_empty() {
        return Err(Error::data(source, format!("file is empty (expected {kind} records of {record} bytes each)")));
    }
    if !bytes.len().is_multiple_of(record) {
        let other = if record == CIFAR10_RECORD_BYTES {
            (CIFAR100_RECORD_BYTES, "CIFAR-100", "read it as CIFAR-100 (read_cifar100_file / --data cifar100:DIR)")
        } else {
            (CIFAR10_RECORD_BYTES, "CIFAR-10", "read it as CIFAR-10 (read_cifar10_file / --data cifar10:DIR)")
        };
        let hint = if bytes.len().is_multiple_of(other.0) {
            format!(
                "it is exactly {} {}-byte {} records, so it looks like the wrong dataset kind: {}",
                bytes.len() / other.0,
                other.0,
                other.1,
                other.2
            )
        } else {
            format!(
                "{} whole records plus {} stray bytes: the file is truncated or corrupt (re-download it), \
                 or it is not a {kind} file (a {} file has {}-byte records)",
                bytes.len() / record,
                bytes.len() % record,
                other.1,
                other.0
            )
        };
        return Err(Error::data(
            source,
            format!(
                "file size {} bytes is not a multiple of the {kind} record size {record} bytes; {hint}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

fn bad_label(source: &str, index: usize, which: &str, label: u8, classes: usize) -> Error {
    Error::data(
        source,
        format!(
            "record {index}: {which}label {label} is out of range 0..{} (wrong dataset kind or a corrupt file)",
            classes - 1
        ),
    )
}

impl Dataset {
    /// Reads one CIFAR-10 binary batch file (e.g. `data_batch_1.bin`).
    pub fn read_cifar10_file(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref();
        let bytes = read_file(path, "CIFAR-10")?;
        Dataset::parse_cifar10(&bytes, &show(path), &stem(path))
    }

    /// Parses CIFAR-10 records held in memory; `source` names them in errors and `name` becomes
    /// `cifar10:{name}`.
    pub fn parse_cifar10(bytes: &[u8], source: &str, name: &str) -> Result<Dataset> {
        check_records(bytes, CIFAR10_RECORD_BYTES, "CIFAR-10", source)?;
        let n = bytes.len() / CIFAR10_RECORD_BYTES;
        let mut images = Vec::with_capacity(n * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(n);
        for (i, rec) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
            if rec[0] >= 10 {
                return Err(bad_label(source, i, "", rec[0], 10));
            }
            labels.push(rec[0] as u32);
            images.extend_from_slice(&rec[1..]);
        }
        Ok(Dataset { images, labels, num_classes: 10, name: format!("cifar10:{name}"), normalize: Normalize::CIFAR10 })
    }

    /// Reads one CIFAR-100 binary file (`train.bin` or `test.bin`); `fine` picks the 100 fine
    /// labels, otherwise the 20 coarse (superclass) labels. Both labels are validated.
    pub fn read_cifar100_file(path: impl AsRef<Path>, fine: bool) -> Result<Dataset> {
        let path = path.as_ref();
        let bytes = read_file(path, "CIFAR-100")?;
        Dataset::parse_cifar100(&bytes, fine, &show(path), &stem(path))
    }

    /// Parses CIFAR-100 records held in memory (see [`Dataset::read_cifar100_file`]).
    pub fn parse_cifar100(bytes: &[u8], fine: bool, source: &str, name: &str) -> Result<Dataset> {
        check_records(bytes, CIFAR100_RECORD_BYTES, "CIFAR-100", source)?;
        let n = bytes.len() / CIFAR100_RECORD_BYTES;
        let mut images = Vec::with_capacity(n * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(n);
        for (i, rec) in bytes.chunks_exact(CIFAR100_RECORD_BYTES).enumerate() {
            if rec[0] >= 20 {
                return Err(bad_label(source, i, "coarse ", rec[0], 20));
            }
            if rec[1] >= 100 {
                return Err(bad_label(source, i, "fine ", rec[1], 100));
            }
            labels.push(if fine { rec[1] } else { rec[0] } as u32);
            images.extend_from_slice(&rec[2..]);
        }
        let (classes, tag) = if fine { (100, "") } else { (20, "-coarse") };
        Ok(Dataset {
            images,
            labels,
            num_classes: classes,
            name: format!("cifar100{tag}:{name}"),
            normalize: Normalize::CIFAR100,
        })
    }

    /// Loads a split from a `cifar-10-batches-bin/` folder (train = the five data batches in order).
    pub fn load_cifar10_dir(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
        let dir = dir.as_ref();
        let files: &[&str] = match split {
            Split::Train => &CIFAR10_TRAIN_FILES,
            Split::Test => &CIFAR10_TEST_FILES,
        };
        let paths = check_folder(dir, files, CIFAR10_FOLDER_NEEDS)?;
        let mut parts = Vec::with_capacity(paths.len());
        for p in &paths {
            parts.push(Dataset::read_cifar10_file(p)?);
        }
        let mut all = concat(parts);
        all.name = format!("cifar10-{}", split.as_str());
        Ok(all)
    }

    /// Loads a split from a `cifar-100-binary/` folder with the 100 fine labels.
    pub fn load_cifar100_dir(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
        let dir = dir.as_ref();
        let file = match split {
            Split::Train => "train.bin",
            Split::Test => "test.bin",
        };
        let paths = check_folder(dir, &[file], CIFAR100_FOLDER_NEEDS)?;
        let mut d = Dataset::read_cifar100_file(&paths[0], true)?;
        d.name = format!("cifar100-{}", split.as_str());
        Ok(d)
    }

    /// Loads a split from a folder of either kind, telling them apart by their file names. `dir` may
    /// be the data folder itself or its parent holding `cifar-10-batches-bin/` or `cifar-100-binary/`.
    pub fn load_dir(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::data(
                show(dir),
                format!("folder not found; point at a CIFAR folder: {CIFAR10_FOLDER_NEEDS}; {CIFAR100_FOLDER_NEEDS}"),
            ));
        }
        let has = |f: &str| dir.join(f).exists();
        if has("data_batch_1.bin") || has("test_batch.bin") {
            return Dataset::load_cifar10_dir(dir, split);
        }
        if has("train.bin") || has("test.bin") {
            return Dataset::load_cifar100_dir(dir, split);
        }
        if dir.join("cifar-10-batches-bin").is_dir() {
            return Dataset::load_cifar10_dir(dir.join("cifar-10-batches-bin"), split);
        }
        if dir.join("cifar-100-binary").is_dir() {
            return Dataset::load_cifar100_dir(dir.join("cifar-100-binary"), split);
        }
        Err(Error::data(show(dir), format!("no CIFAR files here; {CIFAR10_FOLDER_NEEDS}; {CIFAR100_FOLDER_NEEDS}")))
    }
}

/// Checks the folder and all needed files exist, reporting every missing one at once.
fn check_folder(dir: &Path, files: &[&str], needs: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::data(show(dir), format!("folder not found; {needs}")));
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    let missing: Vec<String> = paths.iter().filter(|p| !p.is_file()).map(|p| show(p)).collect();
    if !missing.is_empty() {
        return Err(Error::data(show(dir), format!("missing {}; {needs}", missing.join(", "))));
    }
    Ok(paths)
}

fn concat(parts: Vec<Dataset>) -> Dataset {
    let mut it = parts.into_iter();
    let mut first = it.next().unwrap_or_else(|| Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        num_classes: 10,
        name: String::new(),
        normalize: Normalize::CIFAR10,
    });
    for p in it {
        first.images.extend_from_slice(&p.images);
        first.labels.extend_from_slice(&p.labels);
    }
    first
}
