//! Conv2d on the CPU: tiled im2col + GEMM, 1x1 straight to GEMM, depthwise as a direct loop.
//! (Being written: see the engine-core issue.)

use crate::backend::Conv2dGeom;
use crate::error::{Error, Result};

fn pending(op: &'static str) -> Error {
    Error::invalid(op, "not implemented on the CPU backend yet")
}

/// y [n, c_out, h_out, w_out] = conv(x [n, c_in, h, w], w [c_out, c_in/groups, kh, kw]).
pub fn conv2d(_x: &[f32], _w: &[f32], _g: &Conv2dGeom) -> Result<Vec<f32>> {
    Err(pending("conv2d"))
}
/// dx [n, c_in, h, w] from dy [n, c_out, h_out, w_out] and w.
pub fn conv2d_backward_data(_dy: &[f32], _w: &[f32], _g: &Conv2dGeom) -> Result<Vec<f32>> {
    Err(pending("conv2d_backward_data"))
}
/// dw [c_out, c_in/groups, kh, kw] from x and dy.
pub fn conv2d_backward_weight(_x: &[f32], _dy: &[f32], _g: &Conv2dGeom) -> Result<Vec<f32>> {
    Err(pending("conv2d_backward_weight"))
}
