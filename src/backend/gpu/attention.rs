//! Rust side of kernels/attention.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn attention(gpu: &GpuBackend, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let _ = (qkv, heads, mask);
    Err(gpu.missing_kernel("attention"))
}

pub(super) fn attention_backward(
    gpu: &GpuBackend,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
    mask: &AttnMask,
) -> Result<Tensor> {
    let _ = (qkv, out, lse, dout, heads, mask);
    Err(gpu.missing_kernel("attention_backward"))
}
