//! Real CIFAR-10 images embedded in the binary (see `builtin/README.md` for their provenance), so
//! every command has data without a path: `--data builtin`, the default.

use super::{Dataset, Split};
use crate::Result;

/// CIFAR-10 training images 0..511 of `data_batch_1`, CIFAR binary records.
const TRAIN: &[u8] = include_bytes!("builtin/cifar10_train_first512.bin");
/// CIFAR-10 test images 0..511, CIFAR binary records.
const TEST: &[u8] = include_bytes!("builtin/cifar10_test_first512.bin");

/// Images per built-in split.
pub const BUILTIN_IMAGES: usize = 512;

impl Dataset {
    /// The built-in CIFAR-10 subset: the first 512 training images of `data_batch_1` or the first
    /// 512 test images, exact pixels, CIFAR-10 normalisation.
    pub fn builtin(split: Split) -> Result<Dataset> {
        let bytes = match split {
            Split::Train => TRAIN,
            Split::Test => TEST,
        };
        let mut d = Dataset::parse_cifar10(bytes, "built-in CIFAR-10 data", "builtin")?;
        d.name = format!("cifar10-{}-builtin", split.as_str());
        Ok(d)
    }
}
