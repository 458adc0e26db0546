//! Rust side of kernels/loss.cu (cross-entropy).

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn cross_entropy(gpu: &GpuBackend, logits: &Tensor, targets: &[u32]) -> Result<(Tensor, Tensor)> {
    let _ = (logits, targets);
    Err(gpu.missing_kernel("cross_entropy"))
}

pub(super) fn cross_entropy_backward(
    gpu: &GpuBackend,
    logits: &Tensor,
    lse: &Tensor,
    targets: &[u32],
    dloss: &Tensor,
) -> Result<Tensor> {
    let _ = (logits, lse, targets, dloss);
    Err(gpu.missing_kernel("cross_entropy_backward"))
}
