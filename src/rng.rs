//! The run's random generator. One `--seed` drives everything; ChaCha8 gives the same stream
//! on every platform and crate version, so a seed reproduces a run anywhere.

use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub struct Rng {
    inner: ChaCha8Rng,
    /// Box-Muller yields normals in pairs; the spare is kept for the next call.
    spare_normal: Option<f32>,
}

impl Rng {
    pub fn seed(seed: u64) -> Self {
        Rng { inner: ChaCha8Rng::seed_from_u64(seed), spare_normal: None }
    }
    /// An independent generator for a named sub-task (e.g. one per candidate), derived from this one.
    pub fn fork(&mut self) -> Rng {
        Rng::seed(self.inner.next_u64())
    }
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.inner.gen::<f32>()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        self.inner.gen_range(0..n)
    }
    /// Standard normal (Box-Muller in f64, so the tails are right).
    pub fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let u1 = loop {
            let u: f64 = self.inner.gen();
            if u > 0.0 {
                break u;
            }
        };
        let u2: f64 = self.inner.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}
