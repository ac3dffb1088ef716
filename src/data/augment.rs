//! PyTorch-style CIFAR augmentation: `RandomCrop(32, padding=4)` (zero padding in pixel space)
//! followed by `RandomHorizontalFlip(p=0.5)`. Parameters are drawn sequentially from the run's
//! `Rng` and applied separately, so decoding can run in parallel and stay deterministic.

use super::{IMAGE_BYTES, IMAGE_SIZE};
use crate::rng::Rng;

/// Augmentation settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Zero padding on each side before the random 32x32 crop (0 disables cropping).
    pub padding: usize,
    /// Probability of a horizontal flip.
    pub flip_prob: f32,
}

impl Augment {
    /// The standard CIFAR recipe (mdistiller/RepDistiller): pad 4, crop 32, flip with p = 0.5.
    pub const CIFAR: Augment = Augment { padding: 4, flip_prob: 0.5 };

    /// Draws one image's parameters: crop top, crop left (each uniform in 0..=2*padding, as
    /// torchvision does), then the flip.
    pub fn sample(&self, rng: &mut Rng) -> AugParams {
        let range = 2 * self.padding + 1;
        let top = rng.below(range);
        let left = rng.below(range);
        let flip = rng.uniform(0.0, 1.0) < self.flip_prob;
        AugParams { dy: top as isize - self.padding as isize, dx: left as isize - self.padding as isize, flip }
    }
}

/// One image's augmentation: output pixel (y, x) of the crop is input pixel (y + dy, x + dx), zero
/// outside the image; the flip then mirrors the crop left-right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugParams {
    pub dy: isize,
    pub dx: isize,
    pub flip: bool,
}

impl AugParams {
    pub const IDENTITY: AugParams = AugParams { dy: 0, dx: 0, flip: false };

    /// Writes the augmented CHW image `src` into `dst`.
    pub fn apply(&self, src: &[u8; IMAGE_BYTES], dst: &mut [u8; IMAGE_BYTES]) {
        const S: isize = IMAGE_SIZE as isize;
        let plane = IMAGE_SIZE * IMAGE_SIZE;
        for (sp, dp) in src.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
            for y in 0..S {
                let drow = &mut dp[(y * S) as usize..((y + 1) * S) as usize];
                let sy = y + self.dy;
                if !(0..S).contains(&sy) {
                    drow.fill(0);
                    continue;
                }
                let srow = &sp[(sy * S) as usize..((sy + 1) * S) as usize];
                for (x, d) in drow.iter_mut().enumerate() {
                    let cx = if self.flip { S - 1 - x as isize } else { x as isize };
                    let sx = cx + self.dx;
                    *d = if (0..S).contains(&sx) { srow[sx as usize] } else { 0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_stays_in_range() {
        let mut rng = Rng::seed(1);
        let mut flips = 0;
        for _ in 0..2000 {
            let p = Augment::CIFAR.sample(&mut rng);
            assert!((-4..=4).contains(&p.dy) && (-4..=4).contains(&p.dx));
            flips += p.flip as usize;
        }
        assert!((850..1150).contains(&flips), "{flips}");
    }

    #[test]
    fn identity_copies() {
        let src: [u8; IMAGE_BYTES] = std::array::from_fn(|i| (i % 251) as u8);
        let mut dst = [0u8; IMAGE_BYTES];
        AugParams::IDENTITY.apply(&src, &mut dst);
        assert_eq!(src, dst);
    }
}
