//! The run's random generator. One `--seed` drives everything; ChaCha8 gives the same stream
//! on every platform and crate version, so a seed reproduces a run anywhere.

use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A serialisable snapshot of an [`Rng`] (ChaCha8 key, stream and 32-bit word position, plus the
/// spare normal), written into run state files so a resumed run draws the same numbers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key, hex.
    pub seed: String,
    pub stream: u64,
    /// Position in the keystream (a u128, written as a decimal string so JSON readers keep it exact).
    pub word_pos: String,
    pub spare_normal: Option<f32>,
}

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
    /// The generator's exact position, to save in a run's state and continue from later.
    pub fn state(&self) -> RngState {
        let seed: String = self.inner.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        RngState {
            seed,
            stream: self.inner.get_stream(),
            word_pos: self.inner.get_word_pos().to_string(),
            spare_normal: self.spare_normal,
        }
    }
    /// The generator at a saved position: it continues exactly where [`Rng::state`] was taken.
    pub fn from_state(s: &RngState) -> crate::Result<Rng> {
        let bad = |what: &str| crate::Error::invalid("rng state", format!("{what}; the state file is damaged"));
        if s.seed.len() != 64 {
            return Err(bad("seed must be 64 hex digits"));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s.seed[2 * i..2 * i + 2], 16).map_err(|_| bad("seed is not hex"))?;
        }
        let word_pos: u128 = s.word_pos.parse().map_err(|_| bad("word_pos is not a whole number"))?;
        let mut inner = ChaCha8Rng::from_seed(seed);
        inner.set_stream(s.stream);
        inner.set_word_pos(word_pos);
        Ok(Rng { inner, spare_normal: s.spare_normal })
    }
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = Rng::seed(7);
        for _ in 0..13 {
            a.next_u64();
        }
        let _ = a.normal(); // leaves a spare normal behind
        let saved = serde_json::to_string(&a.state()).unwrap();
        let mut b = Rng::from_state(&serde_json::from_str(&saved).unwrap()).unwrap();
        for _ in 0..5 {
            assert_eq!(a.normal().to_bits(), b.normal().to_bits());
            assert_eq!(a.next_u64(), b.next_u64());
            assert_eq!(a.below(1000), b.below(1000));
        }
        let mut damaged = a.state();
        damaged.seed.pop();
        assert!(Rng::from_state(&damaged).is_err());
    }
}
