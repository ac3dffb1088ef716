//! Batchnorm and layernorm on the CPU. (Being written: see the engine-core issue.)

use crate::backend::NormGeom;
use crate::error::{Error, Result};

fn pending(op: &'static str) -> Error {
    Error::invalid(op, "not implemented on the CPU backend yet")
}

/// Returns (y, mean[c], invstd[c]); updates running_mean/running_var in place.
pub fn batch_norm_train(
    _x: &[f32],
    _gamma: &[f32],
    _beta: &[f32],
    _running_mean: &mut [f32],
    _running_var: &mut [f32],
    _g: &NormGeom,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    Err(pending("batch_norm_train"))
}
/// Returns (dx, dgamma[c], dbeta[c]).
pub fn batch_norm_backward(
    _x: &[f32],
    _dy: &[f32],
    _gamma: &[f32],
    _mean: &[f32],
    _invstd: &[f32],
    _g: &NormGeom,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    Err(pending("batch_norm_backward"))
}
/// Rows g.n, cols g.c. Returns (y, mean[rows], invstd[rows]).
pub fn layer_norm(_x: &[f32], _gamma: &[f32], _beta: &[f32], _g: &NormGeom) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    Err(pending("layer_norm"))
}
/// Returns (dx, dgamma[cols], dbeta[cols]).
pub fn layer_norm_backward(
    _x: &[f32],
    _dy: &[f32],
    _gamma: &[f32],
    _mean: &[f32],
    _invstd: &[f32],
    _g: &NormGeom,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    Err(pending("layer_norm_backward"))
}
