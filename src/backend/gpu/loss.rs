//! Rust side of kernels/loss.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn infonce(gpu: &GpuBackend, img: &Tensor, txt: &Tensor, logit_scale: &Tensor, max_scale: Option<f64>) -> Result<InfoNceOut> {
    let _ = (img, txt, logit_scale, max_scale);
    Err(gpu.missing_kernel("infonce"))
}

pub(super) fn infonce_backward(gpu: &GpuBackend, img: &Tensor, txt: &Tensor, logit_scale: &Tensor, out: &InfoNceOut, dloss: &Tensor, max_scale: Option<f64>) -> Result<(Tensor, Tensor, Tensor)> {
    let _ = (img, txt, logit_scale, out, dloss, max_scale);
    Err(gpu.missing_kernel("infonce_backward"))
}

pub(super) fn cross_entropy(gpu: &GpuBackend, logits: &Tensor, targets: &[u32]) -> Result<(Tensor, Tensor)> {
    let _ = (logits, targets);
    Err(gpu.missing_kernel("cross_entropy"))
}

pub(super) fn cross_entropy_backward(gpu: &GpuBackend, logits: &Tensor, lse: &Tensor, targets: &[u32], dloss: &Tensor) -> Result<Tensor> {
    let _ = (logits, lse, targets, dloss);
    Err(gpu.missing_kernel("cross_entropy_backward"))
}

