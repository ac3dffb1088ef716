//! Where a command's images come from: `--data builtin | cifar10:DIR | cifar100:DIR |
//! synthetic[:CLASSES]`, parsed once and loaded per split.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{Dataset, Split, BUILTIN_IMAGES};
use crate::{Error, Result};

/// The accepted forms, for messages and `--help`.
pub const DATA_SOURCE_FORMS: &str = "builtin (512 + 512 real CIFAR-10 images shipped in the binary), \
     cifar10:DIR (a cifar-10-batches-bin folder), cifar100:DIR (a cifar-100-binary folder) or \
     synthetic[:CLASSES] (random images for tests)";

/// Images per split of the synthetic source (as many as the built-in data).
pub const SYNTHETIC_IMAGES: usize = BUILTIN_IMAGES;

/// A data source named on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DataSource {
    /// The CIFAR-10 images embedded in the binary ([`Dataset::builtin`]).
    #[default]
    Builtin,
    /// A `cifar-10-batches-bin/` folder (or its parent).
    Cifar10(PathBuf),
    /// A `cifar-100-binary/` folder (or its parent), fine labels.
    Cifar100(PathBuf),
    /// Uniform random images and labels ([`Dataset::synthetic`]).
    Synthetic { classes: usize },
}

fn bad(input: &str, detail: impl Into<String>) -> Error {
    Error::data(format!("--data {input}"), detail)
}

/// Which kind of CIFAR folder `dir` is, by its file names.
fn folder_kind(dir: &Path) -> Option<&'static str> {
    let has = |f: &str| dir.join(f).is_file();
    if has("data_batch_1.bin") || has("test_batch.bin") || dir.join("cifar-10-batches-bin").is_dir() {
        Some("cifar10")
    } else if has("train.bin") || has("test.bin") || dir.join("cifar-100-binary").is_dir() {
        Some("cifar100")
    } else {
        None
    }
}

impl FromStr for DataSource {
    type Err = Error;

    fn from_str(input: &str) -> Result<DataSource> {
        let s = input.trim();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k.to_ascii_lowercase(), Some(a)),
            None => (s.to_ascii_lowercase(), None),
        };
        match (kind.as_str(), arg) {
            ("builtin", None) => Ok(DataSource::Builtin),
            ("synthetic", None) => Ok(DataSource::Synthetic { classes: 10 }),
            ("synthetic", Some(c)) => match c.parse::<usize>() {
                Ok(classes) if (1..=256).contains(&classes) => Ok(DataSource::Synthetic { classes }),
                _ => Err(bad(input, format!("'{c}' is not a class count: write synthetic:N with N in 1..=256"))),
            },
            ("cifar10" | "cifar100", Some(dir)) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                Ok(if kind == "cifar10" { DataSource::Cifar10(dir) } else { DataSource::Cifar100(dir) })
            }
            ("cifar10" | "cifar100", _) => {
                let example = if kind == "cifar10" { "cifar-10-batches-bin" } else { "cifar-100-binary" };
                Err(bad(input, format!("{kind} needs a folder: write {kind}:DIR, e.g. {kind}:/data/{example}")))
            }
            _ if Path::new(s).is_dir() => {
                let fix = match folder_kind(Path::new(s)) {
                    Some(k) => format!("write {k}:{s}"),
                    None => format!("write cifar10:{s} or cifar100:{s}"),
                };
                Err(bad(input, format!("a folder needs its data set kind: {fix}")))
            }
            _ => Err(bad(input, format!("unknown data source; use {DATA_SOURCE_FORMS}"))),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Builtin => write!(f, "builtin"),
            DataSource::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
            DataSource::Cifar100(d) => write!(f, "cifar100:{}", d.display()),
            DataSource::Synthetic { classes: 10 } => write!(f, "synthetic"),
            DataSource::Synthetic { classes } => write!(f, "synthetic:{classes}"),
        }
    }
}

impl DataSource {
    /// Number of classes of the labels this source gives.
    pub fn num_classes(&self) -> usize {
        match self {
            DataSource::Builtin | DataSource::Cifar10(_) => 10,
            DataSource::Cifar100(_) => 100,
            DataSource::Synthetic { classes } => *classes,
        }
    }

    /// Loads one split, checking every file (sizes, labels) on the way.
    pub fn load(&self, split: Split) -> Result<Dataset> {
        match self {
            DataSource::Builtin => Dataset::builtin(split),
            DataSource::Synthetic { classes } => {
                let seed = match split {
                    Split::Train => 1,
                    Split::Test => 2,
                };
                let mut d = Dataset::synthetic(SYNTHETIC_IMAGES, *classes, seed);
                d.name = format!("synthetic-{classes}-{}", split.as_str());
                Ok(d)
            }
            DataSource::Cifar10(dir) | DataSource::Cifar100(dir) => {
                let (want, sub) = match self {
                    DataSource::Cifar10(_) => ("cifar10", "cifar-10-batches-bin"),
                    _ => ("cifar100", "cifar-100-binary"),
                };
                // The parent of the usual folder is fine too.
                let dir = if dir.join(sub).is_dir() { dir.join(sub) } else { dir.clone() };
                if let Some(found) = folder_kind(&dir).filter(|k| *k != want) {
                    return Err(bad(
                        &self.to_string(),
                        format!("{} holds {found} files, not {want}: write {found}:{}", dir.display(), dir.display()),
                    ));
                }
                if want == "cifar10" {
                    Dataset::load_cifar10_dir(&dir, split)
                } else {
                    Dataset::load_cifar100_dir(&dir, split)
                }
            }
        }
    }
}
