//! Rust side of kernels/layernorm.cu.

use super::GpuBackend;
use crate::backend::LayerNormOut;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) fn layer_norm(
    gpu: &GpuBackend,
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<LayerNormOut> {
    let _ = (x, residual, gamma, beta, eps);
    Err(gpu.missing_kernel("layer_norm"))
}

pub(super) fn layer_norm_backward(
    gpu: &GpuBackend,
    input: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let _ = (input, gamma, mean, rstd, dy);
    Err(gpu.missing_kernel("layer_norm_backward"))
}
