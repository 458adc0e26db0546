//! Rust side of kernels/infonce.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn infonce(
    gpu: &GpuBackend,
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
) -> Result<InfoNceOut> {
    let _ = (img, txt, logit_scale, max_scale);
    Err(gpu.missing_kernel("infonce"))
}

pub(super) fn infonce_backward(
    gpu: &GpuBackend,
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    out: &InfoNceOut,
    dloss: &Tensor,
    max_scale: Option<f64>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let _ = (img, txt, logit_scale, out, dloss, max_scale);
    Err(gpu.missing_kernel("infonce_backward"))
}
