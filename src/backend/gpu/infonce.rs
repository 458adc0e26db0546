//! Rust side of kernels/infonce.cu: symmetric InfoNCE without the n x n logits.
//!
//! Forward: one launch computes the row and column log-sum-exps (fp32, whatever the features'
//! dtype) and a partial loss per block, a second sums the partials in a fixed order. Backward:
//! one launch writes d img and d txt and the partial sums of the scale gradient, a second
//! reduces them. The workspace is one float per 64 rows.

use super::buffer::Scratch;
use super::context::{int, kernel_for, ptr};
use super::{GpuBackend, KernelArg, LaunchConfig};
use crate::backend::InfoNceOut;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Rows per block (4 warps of 16) and feature columns per block of the backward pass.
const TILE: usize = 64;
const TILE_THREADS: u32 = 128;
const REDUCE_THREADS: u32 = 256;

/// The clamp as the kernels take it: +inf when there is none.
fn max_scale_arg(max_scale: Option<f64>) -> KernelArg {
    KernelArg::F32(max_scale.map_or(f32::INFINITY, |m| m as f32))
}

fn row_blocks(n: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(TILE)).map_err(|_| Error::invalid("infonce", format!("{n} pairs do not fit a grid")))
}

/// `out[0] = factor * sum(partials)`, or 0 when `zero_when_clamped` and the scale is clamped.
fn reduce(
    gpu: &GpuBackend,
    partials: &Scratch,
    count: usize,
    factor: f64,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
    zero_when_clamped: bool,
) -> Result<Tensor> {
    let out = gpu.uninit([1], logit_scale.dtype())?;
    gpu.launch(
        &kernel_for("infonce_reduce", logit_scale.dtype())?,
        LaunchConfig::linear(1, REDUCE_THREADS, 0),
        &[
            KernelArg::Ptr(partials.ptr()),
            int(count, "partial sums")?,
            KernelArg::F32(factor as f32),
            ptr(logit_scale)?,
            max_scale_arg(max_scale),
            KernelArg::I32(i32::from(zero_when_clamped)),
            ptr(&out)?,
        ],
    )?;
    Ok(out)
}

pub(super) fn infonce(
    gpu: &GpuBackend,
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
) -> Result<InfoNceOut> {
    let (n, d) = (img.dims()[0], img.dims()[1]);
    let blocks = row_blocks(n)?;
    let row_lse = gpu.uninit([n], DType::F32)?;
    let col_lse = gpu.uninit([n], DType::F32)?;
    let partials = Scratch::uninit(gpu.device(), 2 * blocks as usize * std::mem::size_of::<f32>())?;
    gpu.launch(
        &kernel_for("infonce_fwd", img.dtype())?,
        LaunchConfig { grid: [blocks, 2, 1], block: [TILE_THREADS, 1, 1], shared_bytes: 0 },
        &[
            ptr(img)?,
            ptr(txt)?,
            ptr(logit_scale)?,
            max_scale_arg(max_scale),
            int(n, "pairs")?,
            int(d, "feature width")?,
            ptr(&row_lse)?,
            ptr(&col_lse)?,
            KernelArg::Ptr(partials.ptr()),
        ],
    )?;
    let loss = reduce(gpu, &partials, 2 * blocks as usize, 1.0 / (2.0 * n as f64), logit_scale, max_scale, false)?;
    Ok(InfoNceOut { loss, row_lse, col_lse })
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
    let (n, d) = (img.dims()[0], img.dims()[1]);
    if out.row_lse.dtype() != DType::F32 || out.col_lse.dtype() != DType::F32 {
        return Err(Error::dtype("infonce_backward", "the GPU kernels take the fp32 log-sum-exps of their forward"));
    }
    if dloss.dtype() != img.dtype() {
        return Err(Error::dtype(
            "infonce_backward",
            format!("dloss is {}, the features {}", dloss.dtype(), img.dtype()),
        ));
    }
    let blocks = row_blocks(n)?;
    let chunks = u32::try_from(d.div_ceil(TILE).max(1))
        .ok()
        .filter(|&c| c <= 65_535)
        .ok_or_else(|| Error::invalid("infonce", format!("feature width {d} is too large")))?;
    let dimg = gpu.uninit([n, d], img.dtype())?;
    let dtxt = gpu.uninit([n, d], txt.dtype())?;
    let partials = Scratch::uninit(gpu.device(), blocks as usize * std::mem::size_of::<f32>())?;
    gpu.launch(
        &kernel_for("infonce_bwd", img.dtype())?,
        LaunchConfig { grid: [blocks, chunks, 2], block: [TILE_THREADS, 1, 1], shared_bytes: 0 },
        &[
            ptr(img)?,
            ptr(txt)?,
            ptr(logit_scale)?,
            max_scale_arg(max_scale),
            ptr(dloss)?,
            ptr(&out.row_lse)?,
            ptr(&out.col_lse)?,
            int(n, "pairs")?,
            int(d, "feature width")?,
            ptr(&dimg)?,
            ptr(&dtxt)?,
            KernelArg::Ptr(partials.ptr()),
        ],
    )?;
    let dscale = reduce(gpu, &partials, blocks as usize, 1.0, logit_scale, max_scale, true)?;
    Ok((dimg, dtxt, dscale))
}
