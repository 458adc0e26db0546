//! Rust side of kernels/layout.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn permute(gpu: &GpuBackend, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let _ = (x, perm);
    Err(gpu.missing_kernel("permute"))
}

pub(super) fn concat(gpu: &GpuBackend, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let _ = (xs, dim);
    Err(gpu.missing_kernel("concat"))
}

pub(super) fn slice(gpu: &GpuBackend, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let _ = (x, dim, start, len);
    Err(gpu.missing_kernel("slice"))
}

pub(super) fn pad_slice(gpu: &GpuBackend, x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor> {
    let _ = (x, dim, start, full);
    Err(gpu.missing_kernel("pad_slice"))
}

pub(super) fn index_rows(gpu: &GpuBackend, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let _ = (table, ids);
    Err(gpu.missing_kernel("index_rows"))
}

pub(super) fn index_rows_backward(gpu: &GpuBackend, dy: &Tensor, ids: &[u32], rows: usize) -> Result<Tensor> {
    let _ = (dy, ids, rows);
    Err(gpu.missing_kernel("index_rows_backward"))
}
