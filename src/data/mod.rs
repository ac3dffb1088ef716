//! Data sets: CIFAR-10/100 binary readers, the small real files shipped in `shared/data`, 1024
//! real CIFAR-10 images built into the binary, a synthetic source for tests, the `--data` parser
//! ([`DataSource`]), per-dataset normalisation, PyTorch-style augmentation and a seeded
//! batch loader.
//!
//! Images are kept as raw bytes in the CIFAR record layout (CHW: 1024 R, 1024 G, 1024 B, each
//! row-major 32x32), so a full CIFAR train set is 150 MB, not 600 MB of f32. Batches are decoded
//! (augment in pixel space, then normalise) on demand.

mod augment;
mod builtin;
mod cifar;
mod loader;
mod shared;
mod source;

pub use augment::{AugParams, Augment};
pub use builtin::BUILTIN_IMAGES;
pub use cifar::{CIFAR100_RECORD_BYTES, CIFAR10_RECORD_BYTES};
pub use loader::{Batch, DataLoader, Epoch};
pub use shared::{shared_cifar10_class_names, shared_data_dir, SHARED_DATA_ENV};
pub use source::{DataSource, DATA_SOURCE_FORMS, SYNTHETIC_IMAGES};

use crate::rng::Rng;
use crate::{Device, Error, Result, Tensor};
use rayon::prelude::*;

/// Side of a CIFAR image.
pub const IMAGE_SIZE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Bytes (= pixels x channels) in one image.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;

/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Per-channel mean/std in [0,1] units: a pixel byte `p` becomes `(p/255 - mean[c]) / std[c]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// The statistics mdistiller/RepDistiller use, so teacher checkpoints see the inputs they were trained on.
    pub const CIFAR10: Normalize = Normalize { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };
    pub const CIFAR100: Normalize = Normalize { mean: [0.5071, 0.4865, 0.4409], std: [0.2673, 0.2564, 0.2762] };

    /// Normalised value of pixel byte `p` in channel `c` (0, 1 or 2; other values use channel 2).
    pub fn apply(&self, c: usize, p: u8) -> f32 {
        let c = c.min(2);
        (p as f32 / 255.0 - self.mean[c]) / self.std[c]
    }

    /// 256-entry table per channel: decoding a batch is then one lookup per pixel.
    pub fn table(&self) -> [[f32; 256]; 3] {
        let mut t = [[0.0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = self.apply(c, p as u8);
            }
        }
        t
    }
}

/// A labelled image set held as raw bytes.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len() * IMAGE_BYTES` bytes, one CHW image after another.
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub num_classes: usize,
    /// e.g. "cifar10-train"; shown in logs and reports.
    pub name: String,
    pub normalize: Normalize,
}

impl Dataset {
    /// Builds a data set after checking that sizes and labels agree.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        num_classes: usize,
        name: impl Into<String>,
        normalize: Normalize,
    ) -> Result<Dataset> {
        let name = name.into();
        if images.len() != labels.len() * IMAGE_BYTES {
            return Err(Error::invalid(
                "Dataset::new",
                format!(
                    "{name}: {} image bytes for {} labels (expected {} = labels x {IMAGE_BYTES})",
                    images.len(),
                    labels.len(),
                    labels.len() * IMAGE_BYTES
                ),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= num_classes) {
            return Err(Error::invalid(
                "Dataset::new",
                format!("{name}: label {l} at index {i} is out of range for {num_classes} classes"),
            ));
        }
        Ok(Dataset { images, labels, num_classes, name, normalize })
    }

    /// `n` images of uniform random bytes with uniform random labels, CIFAR-10 normalisation.
    pub fn synthetic(n: usize, num_classes: usize, seed: u64) -> Dataset {
        let num_classes = num_classes.max(1);
        let mut rng = Rng::seed(seed);
        let mut images = vec![0u8; n * IMAGE_BYTES];
        for chunk in images.chunks_mut(8) {
            let bytes = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let labels = (0..n).map(|_| rng.below(num_classes) as u32).collect();
        Dataset { images, labels, num_classes, name: format!("synthetic-{num_classes}"), normalize: Normalize::CIFAR10 }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The CHW bytes of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8; IMAGE_BYTES]> {
        self.images.get(i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES).and_then(|s| s.try_into().ok())
    }

    /// A new data set with the images at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        self.check_indices("Dataset::subset", indices)?;
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        for &i in indices {
            images.extend_from_slice(&self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]);
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset {
            images,
            labels,
            num_classes: self.num_classes,
            name: format!("{}[{}]", self.name, indices.len()),
            normalize: self.normalize,
        })
    }

    /// The first `n` images (all of them if `n >= len`).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            num_classes: self.num_classes,
            name: format!("{}[..{n}]", self.name),
            normalize: self.normalize,
        }
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Mean pixel value per channel, in pixel units (0..255).
    pub fn channel_means(&self) -> [f64; 3] {
        let mut sums = [0u64; 3];
        for img in self.images.chunks_exact(IMAGE_BYTES) {
            for (c, plane) in img.chunks_exact(IMAGE_SIZE * IMAGE_SIZE).enumerate() {
                sums[c] += plane.iter().map(|&p| p as u64).sum::<u64>();
            }
        }
        let n = (self.len() * IMAGE_SIZE * IMAGE_SIZE).max(1) as f64;
        sums.map(|s| s as f64 / n)
    }

    /// Decodes the images at `indices` into a normalised f32 tensor `[b, 3, 32, 32]`, applying
    /// `aug[k]` to image `k` (in pixel space, before normalisation) when given.
    pub fn decode(&self, indices: &[usize], aug: Option<&[AugParams]>) -> Result<Tensor> {
        self.check_indices("Dataset::decode", indices)?;
        if let Some(a) = aug {
            if a.len() != indices.len() {
                return Err(Error::invalid(
                    "Dataset::decode",
                    format!("{} augmentation parameters for {} images", a.len(), indices.len()),
                ));
            }
        }
        let table = self.normalize.table();
        let mut out = vec![0.0f32; indices.len() * IMAGE_BYTES];
        // One image per task is ~3k lookups; a minimum length keeps rayon overhead below the work.
        out.par_chunks_mut(IMAGE_BYTES).with_min_len(8).enumerate().for_each(|(k, dst)| {
            let i = indices[k];
            let src: &[u8; IMAGE_BYTES] = self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES].try_into().unwrap();
            let mut tmp = [0u8; IMAGE_BYTES];
            let pixels = match aug {
                Some(a) => {
                    a[k].apply(src, &mut tmp);
                    &tmp
                }
                None => src,
            };
            for (c, (d, s)) in dst
                .chunks_exact_mut(IMAGE_SIZE * IMAGE_SIZE)
                .zip(pixels.chunks_exact(IMAGE_SIZE * IMAGE_SIZE))
                .enumerate()
            {
                let t = &table[c];
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = t[s as usize];
                }
            }
        });
        Tensor::from_vec(out, [indices.len(), CHANNELS, IMAGE_SIZE, IMAGE_SIZE], Device::Cpu)
    }

    fn check_indices(&self, op: &'static str, indices: &[usize]) -> Result<()> {
        // Fields are public, so a hand-built set may be inconsistent: report it instead of panicking.
        if self.images.len() != self.len() * IMAGE_BYTES {
            return Err(Error::invalid(
                op,
                format!("{}: {} image bytes for {} labels", self.name, self.images.len(), self.len()),
            ));
        }
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid(op, format!("{}: index {i} out of range for {} images", self.name, self.len())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_formula() {
        let t = Normalize::CIFAR100.table();
        assert_eq!(t[1][200], (200.0f32 / 255.0 - 0.4865) / 0.2564);
        assert_eq!(t[0][0], -0.5071 / 0.2673);
    }

    #[test]
    fn synthetic_is_seeded_and_valid() {
        let a = Dataset::synthetic(5, 7, 3);
        let b = Dataset::synthetic(5, 7, 3);
        let c = Dataset::synthetic(5, 7, 4);
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
        assert_ne!(a.images, c.images);
        assert_eq!(a.images.len(), 5 * IMAGE_BYTES);
        assert!(a.labels.iter().all(|&l| l < 7));
    }

    #[test]
    fn subset_rejects_bad_index() {
        let d = Dataset::synthetic(3, 2, 0);
        assert!(d.subset(&[0, 3]).is_err());
        let s = d.subset(&[2, 0]).unwrap();
        assert_eq!(s.image(0), d.image(2));
        assert_eq!(s.labels, vec![d.labels[2], d.labels[0]]);
        assert!(d.decode(&[5], None).is_err());
    }
}
