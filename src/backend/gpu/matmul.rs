//! Batched matrix products through the driver's GEMM (cuBLASLt on a GPU, the CPU reference on
//! the emulator).

use super::GpuBackend;
use super::context::device_ptr;
use super::driver::{GemmSpec, GemmType};
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

pub(super) fn matmul(
    gpu: &GpuBackend,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, m, k) = match (a.dims(), trans_a) {
        (&[batch, m, k], false) | (&[batch, k, m], true) => (batch, m, k),
        _ => unreachable!("ops::matmul passes rank-3 operands"),
    };
    let n = if trans_b { b.dims()[1] } else { b.dims()[2] };
    let spec = GemmSpec::new(gemm_type("matmul", a.dtype())?, batch, (m, n, k), (trans_a, trans_b));
    let out = gpu.uninit([batch, m, n], a.dtype())?;
    let bias = bias.map(device_ptr).transpose()?;
    gpu.driver()?.gemm(spec, device_ptr(a)?, device_ptr(b)?, bias, device_ptr(&out)?)?;
    Ok(out)
}
