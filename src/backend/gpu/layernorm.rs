//! Rust side of kernels/layernorm.cu: residual add + LayerNorm, one warp per row.

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{blocks_for, int, kernel_for, ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::footprint::Footprint;
use crate::backend::LayerNormOut;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Must match kWarpsPerBlock in layernorm.cu.
const WARPS_PER_BLOCK: usize = 8;
const THREADS: u32 = 32 * WARPS_PER_BLOCK as u32;
/// Rows per backward block: enough to amortise the block's partial-sum row, few enough that a
/// batch of CLIP activations (thousands of rows) still fills every SM.
const BACKWARD_ROWS_PER_BLOCK: usize = 64;
/// Forward grid cap; warps stride over the remaining rows.
const MAX_FORWARD_BLOCKS: usize = 4096;

/// Rows and width of a tensor normalised over its last dimension.
fn rows_width(x: &Tensor) -> (usize, usize) {
    let width = *x.dims().last().expect("ops::layer_norm checks rank >= 1");
    (x.numel() / width.max(1), width)
}

pub(super) fn layer_norm(
    gpu: &GpuBackend,
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<LayerNormOut> {
    let (rows, width) = rows_width(x);
    let dtype = x.dtype();
    let sum = residual.map(|_| gpu.uninit(x.shape().clone(), dtype)).transpose()?;
    let y = gpu.uninit(x.shape().clone(), dtype)?;
    let mean = gpu.uninit([rows], DType::F32)?;
    let rstd = gpu.uninit([rows], DType::F32)?;
    let null = KernelArg::Ptr(0);
    let blocks = blocks_for(rows, WARPS_PER_BLOCK as u32).min(MAX_FORWARD_BLOCKS as u32);
    let (mut reads, mut writes) = (vec![x, gamma, beta], vec![&y, &mean, &rstd]);
    reads.extend(residual);
    writes.extend(&sum);
    let footprint = Footprint::of(&reads, &writes);
    gpu.launch(
        &kernel_for("layernorm_fwd", dtype)?,
        LaunchConfig::linear(blocks, THREADS, 0),
        &[
            ptr(x)?,
            residual.map(ptr).transpose()?.unwrap_or(null),
            sum.as_ref().map(ptr).transpose()?.unwrap_or(null),
            ptr(&y)?,
            ptr(&mean)?,
            ptr(&rstd)?,
            ptr(gamma)?,
            ptr(beta)?,
            ptr(gamma)?,
            ptr(beta)?,
            int(rows, "rows")?,
            int(rows, "rows")?,
            int(width, "width")?,
            KernelArg::F32(eps as f32),
        ],
        footprint,
    )?;
    Ok(LayerNormOut { sum, y, mean, rstd })
}

pub(super) fn layer_norm_backward(
    gpu: &GpuBackend,
    input: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (rows, width) = rows_width(input);
    let dtype = input.dtype();
    let dx = gpu.uninit(input.shape().clone(), dtype)?;
    let dgamma = gpu.uninit([width], dtype)?;
    let dbeta = gpu.uninit([width], dtype)?;
    // One segment here (the trait's LayerNorm has one gamma); the kernel also takes a second.
    let blocks = rows.div_ceil(BACKWARD_ROWS_PER_BLOCK).max(1);
    let partials = Scratch::uninit(gpu.device(), blocks * 2 * width * 4)?;
    let smem = (WARPS_PER_BLOCK * 2 * width * 4) as u32;
    gpu.launch(
        &kernel_for("layernorm_bwd", dtype)?,
        LaunchConfig::linear(blocks as u32, THREADS, smem),
        &[
            ptr(input)?,
            ptr(gamma)?,
            ptr(gamma)?,
            ptr(mean)?,
            ptr(rstd)?,
            ptr(dy)?,
            ptr(&dx)?,
            KernelArg::Ptr(partials.ptr()),
            int(rows, "rows")?,
            int(rows, "rows")?,
            int(width, "width")?,
            int(BACKWARD_ROWS_PER_BLOCK, "rows per block")?,
            int(blocks, "blocks")?,
        ],
        Footprint::of(&[input, gamma, mean, rstd, dy], &[&dx]).writes(partials.bytes()),
    )?;
    let reduce_threads = 256;
    gpu.launch(
        &kernel_for("layernorm_reduce", dtype)?,
        LaunchConfig {
            grid: [blocks_for(width, reduce_threads), 1, 1],
            block: [reduce_threads, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(partials.ptr()),
            ptr(&dgamma)?,
            ptr(&dbeta)?,
            ptr(&dgamma)?,
            ptr(&dbeta)?,
            int(blocks, "blocks")?,
            int(blocks, "blocks")?,
            int(width, "width")?,
        ],
        Footprint::of(&[], &[&dgamma, &dbeta]).reads(partials.bytes()),
    )?;
    Ok((dx, dgamma, dbeta))
}
