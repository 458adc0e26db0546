//! Rust side of kernels/layernorm.cu: residual add + LayerNorm, one warp per row, with a gamma
//! and beta per row segment (the image and text rows of a modality-fused layer).

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{blocks_for, int, kernel_for, ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::elementwise::pack_width;
use super::footprint::Footprint;
use crate::backend::{LayerNormGrads, LayerNormOut, LnAffine, check_dx_plus};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Must match kWarpsPerBlock in layernorm.cu.
const WARPS_PER_BLOCK: usize = 8;
const THREADS: u32 = 32 * WARPS_PER_BLOCK as u32;
/// Rows per backward block (four per warp). Each warp works through its rows one after the
/// other, so this sets how much of a row's latency the GPU can hide: a B/32 image batch of
/// 12,800 rows makes 400 blocks, about three per SM of an H100, where 64 rows a block left each
/// SM one or two. The block's partial-sum row (8 bytes a column, written and read back once)
/// adds about 8% to the 192 bytes a column its bf16 rows move (input, dy, dx). A constant, not
/// a function of the device, so d gamma and d beta round the same way on every GPU.
const BACKWARD_ROWS_PER_BLOCK: usize = 32;
/// Partial-sum columns per reduce block (one per lane).
const REDUCE_COLUMNS_PER_BLOCK: usize = 32;
/// Forward grid cap; warps stride over the remaining rows.
const MAX_FORWARD_BLOCKS: usize = 4096;

/// Floats of one of a backward warp's two column-sum accumulators: `SumSlots::words` in
/// layernorm.cu. Rows split in 16-byte packs of n elements keep n rows of `pitch` slots, pitch
/// the pack count rounded up to 32/n (mod 64/n) so the block's final pass is free of bank
/// conflicts.
fn accumulator_words(width: usize, dtype: DType) -> usize {
    let n = pack_width(dtype);
    if !width.is_multiple_of(n) {
        return width;
    }
    let (packs, m) = (width / n, 64 / n);
    n * (packs + (32 / n + m - packs % m) % m)
}

/// Rows and width of a tensor normalised over its last dimension.
fn rows_width(x: &Tensor) -> (usize, usize) {
    let width = *x.dims().last().expect("ops::layer_norm checks rank >= 1");
    (x.numel() / width.max(1), width)
}

pub(super) fn layer_norm(
    gpu: &GpuBackend,
    x: &Tensor,
    residual: Option<&Tensor>,
    affine: &LnAffine,
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
    // Without a second segment the kernel's second gamma and beta are the first's, from row
    // `rows` on: none of its rows take them.
    let (gamma2, beta2) = affine.second_or_first();
    let (mut reads, mut writes) = (vec![x, &affine.gamma, &affine.beta, gamma2, beta2], vec![&y, &mean, &rstd]);
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
            ptr(&affine.gamma)?,
            ptr(&affine.beta)?,
            ptr(gamma2)?,
            ptr(beta2)?,
            int(affine.first_rows(rows), "rows")?,
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
    affine: &LnAffine,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    dx_plus: Option<&Tensor>,
) -> Result<LayerNormGrads> {
    check_dx_plus(input, dx_plus)?;
    let (rows, width) = rows_width(input);
    let dtype = input.dtype();
    let dx = gpu.uninit(input.shape().clone(), dtype)?;
    let dgamma = gpu.uninit([width], dtype)?;
    let dbeta = gpu.uninit([width], dtype)?;
    let second = affine.second.as_ref().map(|_| Ok((gpu.uninit([width], dtype)?, gpu.uninit([width], dtype)?)));
    let second: Option<(Tensor, Tensor)> = second.transpose()?;
    let gamma2 = affine.second_or_first().0;
    // Each block's rows lie in one segment (the kernel's partial sums are per segment), so each
    // segment starts a block; an empty one has none. At least one block, which may own no row.
    let first_rows = affine.first_rows(rows);
    let first_blocks = first_rows.div_ceil(BACKWARD_ROWS_PER_BLOCK);
    let blocks = (first_blocks + (rows - first_rows).div_ceil(BACKWARD_ROWS_PER_BLOCK)).max(1);
    let partials = Scratch::uninit(gpu.device(), blocks * 2 * width * 4)?;
    let smem = (WARPS_PER_BLOCK * 2 * accumulator_words(width, dtype) * 4) as u32;
    let mut reads = vec![input, &affine.gamma, gamma2, mean, rstd, dy];
    reads.extend(dx_plus);
    gpu.launch(
        &kernel_for("layernorm_bwd", dtype)?,
        LaunchConfig::linear(blocks as u32, THREADS, smem),
        &[
            ptr(input)?,
            ptr(&affine.gamma)?,
            ptr(gamma2)?,
            ptr(mean)?,
            ptr(rstd)?,
            ptr(dy)?,
            dx_plus.map(ptr).transpose()?.unwrap_or(KernelArg::Ptr(0)),
            ptr(&dx)?,
            KernelArg::Ptr(partials.ptr()),
            int(first_rows, "rows")?,
            int(rows, "rows")?,
            int(width, "width")?,
            int(BACKWARD_ROWS_PER_BLOCK, "rows per block")?,
            int(first_blocks, "blocks")?,
        ],
        Footprint::of(&reads, &[&dx]).writes(partials.bytes()),
    )?;
    // grid y: one row of blocks per segment, each adding its own blocks' partial sums.
    let (dgamma2, dbeta2) = second.as_ref().map_or((&dgamma, &dbeta), |(g, b)| (g, b));
    gpu.launch(
        &kernel_for("layernorm_reduce", dtype)?,
        LaunchConfig {
            grid: [(2 * width).div_ceil(REDUCE_COLUMNS_PER_BLOCK) as u32, if second.is_some() { 2 } else { 1 }, 1],
            block: [THREADS, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(partials.ptr()),
            ptr(&dgamma)?,
            ptr(&dbeta)?,
            ptr(dgamma2)?,
            ptr(dbeta2)?,
            int(first_blocks, "blocks")?,
            int(blocks, "blocks")?,
            int(width, "width")?,
        ],
        Footprint::of(&[], &[&dgamma, &dbeta, dgamma2, dbeta2]).reads(partials.bytes()),
    )?;
    Ok(LayerNormGrads { dx, dgamma, dbeta, second })
}
