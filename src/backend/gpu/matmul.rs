//! Batched matrix products through the driver's GEMM (cuBLASLt on a GPU, the CPU reference on
//! the emulator).

use super::GpuBackend;
use super::context::device_ptr;
use super::driver::{GemmEpilogue, GemmSpec, GemmType};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The driver's element type for tensors of `dtype`, refused for `op` where GEMMs have none.
pub(super) fn gemm_type(op: &'static str, dtype: DType) -> Result<GemmType> {
    match dtype {
        DType::F32 => Ok(GemmType::F32),
        DType::BF16 => Ok(GemmType::BF16),
        DType::F64 => Err(Error::dtype(op, "GPU GEMMs take f32 or bf16, not f64")),
    }
}

/// The spec of `op(a) @ op(b)`: a is [batch, m, k] ([batch, k, m] when `trans_a`), b is
/// [batch, k, n] ([batch, n, k] when `trans_b`).
fn spec_of(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<GemmSpec> {
    let (batch, m, k) = match (a.dims(), trans_a) {
        (&[batch, m, k], false) | (&[batch, k, m], true) => (batch, m, k),
        _ => unreachable!("ops::matmul passes rank-3 operands"),
    };
    let n = if trans_b { b.dims()[1] } else { b.dims()[2] };
    Ok(GemmSpec::new(gemm_type("matmul", a.dtype())?, batch, (m, n, k), (trans_a, trans_b)))
}

pub(super) fn matmul(
    gpu: &GpuBackend,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let spec = spec_of(a, b, trans_a, trans_b)?;
    let out = gpu.uninit([spec.batch, spec.m, spec.n], a.dtype())?;
    let epilogue = match bias {
        Some(bias) => GemmEpilogue::Bias(device_ptr(bias)?),
        None => GemmEpilogue::None,
    };
    gpu.driver()?.gemm(spec, device_ptr(a)?, device_ptr(b)?, epilogue, device_ptr(&out)?)?;
    Ok(out)
}

/// `op(a) @ op(b)` for one product and the sums of op(a)'s rows, in the GEMM's bias-gradient
/// epilogue where the driver has it for the shape, else by `sum_middle` after the product.
pub(super) fn matmul_bias_grad(
    gpu: &GpuBackend,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> Result<(Tensor, Tensor)> {
    let spec = spec_of(a, b, trans_a, trans_b)?;
    let driver = gpu.driver()?;
    if spec.batch != 1 || !driver.has_bias_grad_epilogue(spec) {
        return crate::backend::matmul_then_row_sums(gpu, a, b, trans_a, trans_b);
    }
    let out = gpu.uninit([1, spec.m, spec.n], a.dtype())?;
    let sums = gpu.uninit([spec.m], a.dtype())?;
    let epilogue = GemmEpilogue::BiasGrad(device_ptr(&sums)?);
    driver.gemm(spec, device_ptr(a)?, device_ptr(b)?, epilogue, device_ptr(&out)?)?;
    Ok((out, sums))
}
