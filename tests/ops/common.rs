//! Shared machinery of the op tests: seeded inputs, tolerant comparison, and the gradient
//! check (our f32 backward against central finite differences of the f64 reference).
//!
//! Every test body takes a `Device`, so the same body runs on every backend (see `main.rs`).

use kdscout::rng::Rng;
use kdscout::{Device, Result, Tensor};

/// Deterministic values in [-1, 1) (or a caller's range) for test inputs.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::seed(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

pub fn rand_vec_in(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::seed(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// |a − e| <= atol + rtol·|e| element by element; the message names the first failure.
pub fn assert_close(actual: &[f32], expected: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length {} vs reference {}", actual.len(), expected.len());
    let mut worst = (0usize, 0.0f64);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a as f64 - e).abs();
        let allowed = atol + rtol * e.abs();
        assert!(a.is_finite() || !e.is_finite(), "{what}: element {i} is {a}, reference {e}");
        if err - allowed > worst.1 {
            worst = (i, err - allowed);
        }
        assert!(err <= allowed, "{what}: element {i}: got {a}, reference {e} (|err| {err:.3e} > {allowed:.3e})");
    }
}

/// One input of an op under test: its shape and values.
pub struct Input {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// Whether its gradient is checked (false for e.g. targets that are not differentiated).
    pub grad: bool,
}

impl Input {
    pub fn new(shape: &[usize], seed: u64) -> Input {
        let n = shape.iter().product();
        Input { shape: shape.to_vec(), values: rand_vec(n, seed), grad: true }
    }
    pub fn with_values(shape: &[usize], values: Vec<f32>) -> Input {
        assert_eq!(values.len(), shape.iter().product::<usize>());
        Input { shape: shape.to_vec(), values, grad: true }
    }
    pub fn no_grad(mut self) -> Input {
        self.grad = false;
        self
    }
}

/// Tolerances of one check.
#[derive(Clone, Copy)]
pub struct Tol {
    pub fwd_rtol: f64,
    pub fwd_atol: f64,
    pub grad_rtol: f64,
    pub grad_atol: f64,
}

impl Default for Tol {
    fn default() -> Self {
        Tol { fwd_rtol: 1e-4, fwd_atol: 1e-5, grad_rtol: 1e-3, grad_atol: 1e-4 }
    }
}

/// Checks an op end to end:
/// 1. forward: `ours` (f32, on `dev`) against `reference` (naive f64) element by element;
/// 2. backward: gradients of L = Σ ours(x)·r (r fixed random weights) w.r.t. every input with
///    `grad`, against central differences of Lref = Σ reference(x)·r computed in f64
///    (step 1e-6; on at most `max_fd` elements per input, spread over the tensor).
pub fn check_op(
    dev: Device,
    what: &str,
    inputs: &[Input],
    ours: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    tol: Tol,
) {
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|i| {
            let t = Tensor::from_slice(&i.values, i.shape.clone(), dev).unwrap();
            if i.grad {
                t.requires_grad_()
            } else {
                t
            }
        })
        .collect();
    let y = ours(&tensors).unwrap_or_else(|e| panic!("{what}: forward failed: {e}"));
    let ref_inputs: Vec<Vec<f64>> = inputs.iter().map(|i| to_f64(&i.values)).collect();
    let y_ref = reference(&ref_inputs);
    assert_close(&y.to_vec().unwrap(), &y_ref, tol.fwd_rtol, tol.fwd_atol, &format!("{what} forward"));

    if !inputs.iter().any(|i| i.grad) {
        return;
    }
    let r = rand_vec(y.numel(), 0x5eed);
    let r_t = Tensor::from_slice(&r, y.shape().clone(), dev).unwrap();
    let loss = y.mul(&r_t).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap_or_else(|e| panic!("{what}: backward failed: {e}"));
    let lref = |xs: &[Vec<f64>]| -> f64 { reference(xs).iter().zip(&r).map(|(a, &b)| a * b as f64).sum() };
    let max_fd = 96;
    for (k, (inp, t)) in inputs.iter().zip(&tensors).enumerate() {
        if !inp.grad {
            continue;
        }
        let g = grads.of(t).unwrap_or_else(|e| panic!("{what}: input {k}: {e}")).to_vec().unwrap();
        assert_eq!(g.len(), inp.values.len(), "{what}: gradient length of input {k}");
        let n = inp.values.len();
        let step = n.div_ceil(max_fd).max(1);
        let mut idx: Vec<usize> = (0..n).step_by(step).collect();
        if n > 0 && *idx.last().unwrap() != n - 1 {
            idx.push(n - 1);
        }
        let h = 1e-6;
        let mut got = Vec::new();
        let mut want = Vec::new();
        for &j in &idx {
            let mut xs = ref_inputs.clone();
            xs[k][j] += h;
            let lp = lref(&xs);
            xs[k][j] -= 2.0 * h;
            let lm = lref(&xs);
            got.push(g[j]);
            want.push((lp - lm) / (2.0 * h));
        }
        assert_close(
            &got,
            &want,
            tol.grad_rtol,
            tol.grad_atol,
            &format!("{what} gradient of input {k} (sampled elements {idx:?})"),
        );
    }
}

/// Row-major index helper for references: offset of `idx` in `dims`.
pub fn offset(dims: &[usize], idx: &[usize]) -> usize {
    dims.iter().zip(idx).fold(0, |acc, (&d, &i)| acc * d + i)
}

/// `full` on real devices, `emulated` on the kernel emulator. The emulator runs one fiber per
/// CUDA thread on one core, thousands of times slower than a GPU; tests whose sizes exist only to
/// reach the CPU backend's parallel paths take the smaller size there (still large enough for
/// multi-block grids and split reductions). Assertions never depend on which size was taken.
#[allow(dead_code)]
pub fn emulator_scaled(dev: Device, full: usize, emulated: usize) -> usize {
    #[cfg(feature = "cuda-emu")]
    if dev == Device::CudaEmu {
        return emulated;
    }
    let _ = (dev, emulated);
    full
}
