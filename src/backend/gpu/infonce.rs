//! Rust side of kernels/infonce.cu: symmetric InfoNCE without the n x n logits, for the whole
//! batch or for one data-parallel rank's rows of it (the design is at the top of the .cu file).
//!
//! Forward: `infonce_partial` is one launch (the rank's row log-sum-exps, partial column
//! log-sum-exps, one partial loss term per 64 rows); `infonce_finish` combines the ranks' column
//! partials (one thread per column; nothing to do for a single rank) and sums the rank's loss
//! share in a fixed order. The whole batch is the rank with offset 0. Backward: one launch writes
//! d img, d txt and partial sums of the scale gradient, a second reduces them. Besides the
//! outputs, the workspace is one float per 64 rows.

use super::context::{device_ptr, int, kernel_for, ptr};
use super::{GpuBackend, KernelArg, LaunchConfig};
use crate::backend::{InfoNceOut, InfoNcePartial, check_col_partials, check_infonce_shard};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Rows per block, and feature columns per staged chunk.
const TILE: usize = 64;
const FORWARD_THREADS: u32 = 128;
const BACKWARD_THREADS: u32 = 256;
/// Feature chunks whose gradient one backward block accumulates (512 columns).
const GROUP_CHUNKS: usize = 8;
const REDUCE_THREADS: u32 = 256;
const COMBINE_THREADS: u32 = 256;

/// The clamp as the kernels take it: +inf when there is none.
fn max_scale_arg(max_scale: Option<f64>) -> KernelArg {
    KernelArg::F32(max_scale.map_or(f32::INFINITY, |m| m as f32))
}

/// Blocks of TILE rows over `rows`.
fn row_blocks(rows: usize) -> Result<u32> {
    u32::try_from(rows.div_ceil(TILE)).map_err(|_| Error::invalid("infonce", format!("{rows} rows do not fit a grid")))
}

/// The backward's dynamic shared memory: the own tile, the dz tile and one slot per feature chunk
/// of a group, each TILE rows of TILE operands padded as kernels/tile.cuh pads them (bf16 rows by
/// 8 elements, f32 rows by 4).
fn backward_shared_bytes(dtype: DType, chunks: usize) -> u32 {
    let row_bytes = match dtype {
        DType::BF16 => (TILE + 8) * 2,
        _ => (TILE + 4) * 4,
    };
    ((2 + chunks.min(GROUP_CHUNKS)) * TILE * row_bytes) as u32
}

/// `out[0] = factor * (sum of a[..a_count] + sum of b[..b_count])` as `dtype`, in a fixed order.
fn reduce(
    gpu: &GpuBackend,
    (a, a_count): (KernelArg, usize),
    (b, b_count): (KernelArg, usize),
    factor: f64,
    dtype: DType,
) -> Result<Tensor> {
    let out = gpu.uninit([1], dtype)?;
    gpu.launch(
        &kernel_for("infonce_reduce", dtype)?,
        LaunchConfig::linear(1, REDUCE_THREADS, 0),
        &[
            a,
            int(a_count, "partial sums")?,
            b,
            int(b_count, "partial sums")?,
            KernelArg::F32(factor as f32),
            ptr(&out)?,
        ],
    )?;
    Ok(out)
}

/// The shard arguments every kernel takes: n_local, n, offset, d.
fn shard_args(img: &Tensor, txt: &Tensor, offset: usize) -> Result<[KernelArg; 4]> {
    Ok([
        int(img.dims()[0], "local rows")?,
        int(txt.dims()[0], "pairs")?,
        int(offset, "row offset")?,
        int(img.dims()[1], "feature width")?,
    ])
}

pub(super) fn infonce(
    gpu: &GpuBackend,
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
) -> Result<InfoNceOut> {
    let partial = infonce_partial(gpu, img, txt, logit_scale, max_scale, 0)?;
    let single_rank = partial.col_lse.view_as([1, txt.dims()[0]].into())?;
    infonce_finish(gpu, &partial, &single_rank, 0)
}

pub(super) fn infonce_partial(
    gpu: &GpuBackend,
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
    offset: usize,
) -> Result<InfoNcePartial> {
    check_infonce_shard("infonce_partial", img, txt, offset)?;
    let (n_local, n) = (img.dims()[0], txt.dims()[0]);
    let row_lse = gpu.uninit([n_local], DType::F32)?;
    let col_lse = gpu.uninit([n], DType::F32)?;
    let row_terms = gpu.uninit([n_local.div_ceil(TILE)], DType::F32)?;
    let mut args = vec![ptr(img)?, ptr(txt)?, ptr(logit_scale)?, max_scale_arg(max_scale)];
    args.extend(shard_args(img, txt, offset)?);
    args.extend([ptr(&row_lse)?, ptr(&col_lse)?, ptr(&row_terms)?]);
    gpu.launch(
        &kernel_for("infonce_fwd", img.dtype())?,
        LaunchConfig { grid: [row_blocks(n)?, 2, 1], block: [FORWARD_THREADS, 1, 1], shared_bytes: 0 },
        &args,
    )?;
    Ok(InfoNcePartial { row_lse, col_lse, row_terms, dtype: img.dtype() })
}

pub(super) fn infonce_finish(
    gpu: &GpuBackend,
    partial: &InfoNcePartial,
    col_partials: &Tensor,
    offset: usize,
) -> Result<InfoNceOut> {
    check_col_partials("infonce_finish", partial, col_partials, offset)?;
    if partial.row_terms.dtype() != DType::F32 {
        return Err(Error::dtype("infonce_finish", "the GPU kernels take the fp32 partials of their forward"));
    }
    let (ranks, n) = (col_partials.dims()[0], col_partials.dims()[1]);
    let col_lse = if ranks == 1 {
        col_partials.view_as([n].into())?
    } else {
        let combined = gpu.uninit([n], DType::F32)?;
        gpu.launch(
            "infonce_combine_f32",
            LaunchConfig::linear(n.div_ceil(COMBINE_THREADS as usize) as u32, COMBINE_THREADS, 0),
            &[ptr(col_partials)?, int(ranks, "ranks")?, int(n, "pairs")?, ptr(&combined)?],
        )?;
        combined
    };
    // The rank's share: its row terms and the log-sum-exps of its columns offset .. offset + n_local.
    let own_columns = KernelArg::Ptr(device_ptr(&col_lse)? + (offset * std::mem::size_of::<f32>()) as u64);
    let loss = reduce(
        gpu,
        (ptr(&partial.row_terms)?, partial.row_terms.numel()),
        (own_columns, partial.row_lse.numel()),
        1.0 / (2.0 * n as f64),
        partial.dtype,
    )?;
    Ok(InfoNceOut { loss, row_lse: partial.row_lse.clone(), col_lse })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn infonce_shard_backward(
    gpu: &GpuBackend,
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    out: &InfoNceOut,
    dloss: &Tensor,
    max_scale: Option<f64>,
    offset: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_infonce_shard("infonce_shard_backward", img, txt, offset)?;
    let (n_local, n, d) = (img.dims()[0], txt.dims()[0], img.dims()[1]);
    if out.row_lse.dtype() != DType::F32 || out.col_lse.dtype() != DType::F32 {
        return Err(Error::dtype("infonce_backward", "the GPU kernels take the fp32 log-sum-exps of their forward"));
    }
    if out.row_lse.numel() != n_local || out.col_lse.numel() != n {
        return Err(Error::shape(
            "infonce_backward",
            format!(
                "log-sum-exps of {} rows and {} columns for {n_local} x {n} logits",
                out.row_lse.numel(),
                out.col_lse.numel()
            ),
        ));
    }
    if dloss.dtype() != img.dtype() {
        return Err(Error::dtype(
            "infonce_backward",
            format!("dloss is {}, the features {}", dloss.dtype(), img.dtype()),
        ));
    }
    let chunks = d.div_ceil(TILE);
    let groups = u32::try_from(chunks.div_ceil(GROUP_CHUNKS))
        .ok()
        .filter(|&g| g <= 65_535)
        .ok_or_else(|| Error::invalid("infonce", format!("feature width {d} is too large")))?;
    let dimg = gpu.uninit([n_local, d], img.dtype())?;
    let dtxt = gpu.uninit([n, d], txt.dtype())?;
    let dscale_partials = gpu.uninit([n_local.div_ceil(TILE)], DType::F32)?;
    let mut args = vec![
        ptr(img)?,
        ptr(txt)?,
        ptr(logit_scale)?,
        max_scale_arg(max_scale),
        ptr(dloss)?,
        ptr(&out.row_lse)?,
        ptr(&out.col_lse)?,
    ];
    args.extend(shard_args(img, txt, offset)?);
    args.extend([ptr(&dimg)?, ptr(&dtxt)?, ptr(&dscale_partials)?]);
    gpu.launch(
        &kernel_for("infonce_bwd", img.dtype())?,
        LaunchConfig {
            grid: [row_blocks(n)?, groups, 2],
            block: [BACKWARD_THREADS, 1, 1],
            shared_bytes: backward_shared_bytes(img.dtype(), chunks),
        },
        &args,
    )?;
    let partials = (ptr(&dscale_partials)?, dscale_partials.numel());
    let dscale = reduce(gpu, partials, (partials.0, 0), 1.0, logit_scale.dtype())?;
    Ok((dimg, dtxt, dscale))
}
