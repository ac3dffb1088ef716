//! Batched matmul on the CPU through the `gemm` crate (AVX-512 kernels chosen at run time).
//! (Being written: see the engine-core issue.)

use crate::backend::MatmulGeom;
use crate::error::{Error, Result};

/// C [batch, m, n] = op(A)·op(B); layouts as documented at `MatmulGeom`.
pub fn matmul(_a: &[f32], _b: &[f32], _g: &MatmulGeom) -> Result<Vec<f32>> {
    Err(Error::invalid("matmul", "not implemented on the CPU backend yet"))
}
