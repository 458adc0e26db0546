//! Rust side of kernels/adamw.cu.

use super::GpuBackend;
use crate::backend::*;
use crate::error::Result;
use crate::tensor::*;

pub(super) fn adamw_step(
    gpu: &GpuBackend,
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hp: AdamWStep,
) -> Result<()> {
    let _ = (param, grad, m, v, hp);
    Err(gpu.missing_kernel("adamw_step"))
}
