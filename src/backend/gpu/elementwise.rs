//! Rust side of kernels/elementwise.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn cast(gpu: &GpuBackend, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let _ = (x, dtype);
    Err(gpu.missing_kernel("cast"))
}

pub(super) fn binary(gpu: &GpuBackend, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _ = (op, a, b);
    Err(gpu.missing_kernel("binary"))
}

pub(super) fn unary(gpu: &GpuBackend, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let _ = (op, x);
    Err(gpu.missing_kernel("unary"))
}

pub(super) fn unary_backward(gpu: &GpuBackend, op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let _ = (op, x, y, dy);
    Err(gpu.missing_kernel("unary_backward"))
}

pub(super) fn sum_middle(gpu: &GpuBackend, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    let _ = (x, outer, n, inner);
    Err(gpu.missing_kernel("sum_middle"))
}

pub(super) fn repeat_middle(gpu: &GpuBackend, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    let _ = (x, outer, n, inner);
    Err(gpu.missing_kernel("repeat_middle"))
}

pub(super) fn softmax(gpu: &GpuBackend, x: &Tensor) -> Result<Tensor> {
    let _ = x;
    Err(gpu.missing_kernel("softmax"))
}

pub(super) fn softmax_backward(gpu: &GpuBackend, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let _ = (y, dy);
    Err(gpu.missing_kernel("softmax_backward"))
}

pub(super) fn l2_normalize(gpu: &GpuBackend, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let _ = (x, eps);
    Err(gpu.missing_kernel("l2_normalize"))
}

pub(super) fn l2_normalize_backward(
    gpu: &GpuBackend,
    y: &Tensor,
    norm: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let _ = (y, norm, dy, eps);
    Err(gpu.missing_kernel("l2_normalize_backward"))
}
