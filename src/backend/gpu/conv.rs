//! Rust side of kernels/conv.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn conv2d(gpu: &GpuBackend, x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
    let _ = (x, w, geo);
    Err(gpu.missing_kernel("conv2d"))
}

pub(super) fn conv2d_backward(
    gpu: &GpuBackend,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    geo: Conv2dGeometry,
    need_dx: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let _ = (x, w, dy, geo, need_dx);
    Err(gpu.missing_kernel("conv2d_backward"))
}

pub(super) fn batch_norm_train(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormOut> {
    let _ = (x, gamma, beta, eps);
    Err(gpu.missing_kernel("batch_norm_train"))
}

pub(super) fn batch_norm_eval(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let _ = (x, gamma, beta, mean, var, eps);
    Err(gpu.missing_kernel("batch_norm_eval"))
}

pub(super) fn batch_norm_backward(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    dy: &Tensor,
    eps: f64,
    batch_stats: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let _ = (x, gamma, mean, var, dy, eps, batch_stats);
    Err(gpu.missing_kernel("batch_norm_backward"))
}
