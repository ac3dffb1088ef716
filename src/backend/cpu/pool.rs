//! Pooling and resampling on the CPU. (Being written: see the engine-core issue.)

use crate::backend::{InterpMode, Pool2dGeom, PoolKind, ResizeGeom};
use crate::error::{Error, Result};

fn pending(op: &'static str) -> Error {
    Error::invalid(op, "not implemented on the CPU backend yet")
}

pub fn pool2d(_kind: PoolKind, _x: &[f32], _g: &Pool2dGeom) -> Result<Vec<f32>> {
    Err(pending("pool2d"))
}
pub fn pool2d_backward(_kind: PoolKind, _x: &[f32], _dy: &[f32], _g: &Pool2dGeom) -> Result<Vec<f32>> {
    Err(pending("pool2d_backward"))
}
pub fn adaptive_avg_pool2d(_x: &[f32], _g: &ResizeGeom) -> Result<Vec<f32>> {
    Err(pending("adaptive_avg_pool2d"))
}
pub fn adaptive_avg_pool2d_backward(_dy: &[f32], _g: &ResizeGeom) -> Result<Vec<f32>> {
    Err(pending("adaptive_avg_pool2d_backward"))
}
pub fn interpolate(_mode: InterpMode, _x: &[f32], _g: &ResizeGeom) -> Result<Vec<f32>> {
    Err(pending("interpolate"))
}
pub fn interpolate_backward(_mode: InterpMode, _dy: &[f32], _g: &ResizeGeom) -> Result<Vec<f32>> {
    Err(pending("interpolate_backward"))
}
