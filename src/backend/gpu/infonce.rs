//! Rust side of kernels/infonce.cu: InfoNCE with weighted directions without the n x n logits,
//! for the whole batch or for one data-parallel rank's rows of it (the design is at the top of the
//! .cu file).
//!
//! Forward: `infonce_partial` is one launch (the rank's row log-sum-exps, partial column
//! log-sum-exps, one partial sum of positive logits per block), plus the merge of the row splits
//! when the rank's texts are split; `infonce_finish` combines the ranks' column partials (nothing to
//! do for a single rank) and sums the rank's loss share in a fixed order. The whole batch is the
//! rank with offset 0, and never splits. Backward: one launch writes d img (or the splits' parts of
//! it), d txt and partial sums of the scale gradient; the splits and the partial sums are then
//! reduced. Besides the outputs, the workspace is one float per 64 rows, and with splits
//! row_splits x n_local (about n) log-sum-exps and rows of d img in fp32. bf16 runs on wgmma where
//! the backend uses it (a compute-capability 9.0 GPU, the emulator), else on mma.sync.

use super::context::{device_ptr, int, kernel_for, ptr};
use super::footprint::Footprint;
use super::{GpuBackend, KernelArg, LaunchConfig};
use crate::backend::{ContrastWeights, InfoNceOut, InfoNcePartial, InfoNceShard};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Rows per block, and feature columns per staged chunk.
const TILE: usize = 64;
const FORWARD_THREADS: u32 = 128;
const BACKWARD_THREADS: u32 = 256;
/// Feature chunks whose gradient one backward block accumulates (512 columns).
const GROUP_CHUNKS: usize = 8;
const REDUCE_THREADS: u32 = 256;
const ELEMENT_THREADS: u32 = 256;

/// The launch geometry of a shard: the row direction's texts are split into `row_splits` ranges
/// so that it has about as many blocks as the column direction (1 for the whole batch).
struct Plan {
    n_local: usize,
    n: usize,
    row_splits: usize,
    /// Blocks along x, for both directions (the surplus of one leaves at once).
    grid_x: u32,
}

impl Plan {
    fn of(shard: &InfoNceShard<'_>) -> Result<Plan> {
        let (n_local, n, _) = shard.dims();
        let (row_blocks, col_blocks) = (n_local.div_ceil(TILE), n.div_ceil(TILE));
        let row_splits = col_blocks.div_ceil(row_blocks);
        let grid_x = u32::try_from(col_blocks.max(row_blocks * row_splits))
            .map_err(|_| Error::invalid("infonce", format!("{n} pairs do not fit a grid")))?;
        Ok(Plan { n_local, n, row_splits, grid_x })
    }

    /// Partial sums the row-direction blocks write: one per block and split.
    fn row_partials(&self) -> usize {
        self.n_local.div_ceil(TILE) * self.row_splits
    }

    /// The shard arguments every kernel takes: n_local, n, offset, row_splits, d.
    fn args(&self, shard: &InfoNceShard<'_>) -> Result<[KernelArg; 5]> {
        Ok([
            int(self.n_local, "local rows")?,
            int(self.n, "pairs")?,
            int(shard.offset, "row offset")?,
            int(self.row_splits, "row splits")?,
            int(shard.dims().2, "feature width")?,
        ])
    }
}

/// The clamp as the kernels take it: +inf when there is none.
fn max_scale_arg(max_scale: Option<f64>) -> KernelArg {
    KernelArg::F32(max_scale.map_or(f32::INFINITY, |m| m as f32))
}

fn element_blocks(count: usize) -> u32 {
    count.div_ceil(ELEMENT_THREADS as usize).max(1) as u32
}

/// One region of the kernels' dynamic shared memory: TILE rows of TILE operands padded as
/// kernels/tile.cuh pads them (bf16 rows by 8 elements, f32 rows by 4); the wgmma variant's
/// unpadded core-matrix tiles fit in it.
fn tile_bytes(dtype: DType) -> usize {
    let row_bytes = match dtype {
        DType::BF16 => (TILE + 8) * 2,
        _ => (TILE + 4) * 4,
    };
    TILE * row_bytes
}

/// Which of the .cu file's tile variants runs: bf16 on wgmma where the backend uses it, else
/// bf16 on mma.sync; f32 on the CUDA cores.
struct Variant {
    dtype: DType,
    wgmma: bool,
}

impl Variant {
    fn of(gpu: &GpuBackend, dtype: DType) -> Result<Variant> {
        Ok(Variant { dtype, wgmma: dtype == DType::BF16 && gpu.uses_wgmma()? })
    }

    /// `<base>_wgmma_bf16`, `<base>_bf16` or `<base>_f32`.
    fn kernel(&self, base: &str) -> Result<String> {
        match self.wgmma {
            true => Ok(format!("{base}_wgmma_bf16")),
            false => kernel_for(base, self.dtype),
        }
    }

    /// The forward's dynamic shared memory: the own and the other tile, two of each for the
    /// pipelined wgmma forward (it stages the next chunk while the tensor cores work).
    fn forward_shared_bytes(&self) -> u32 {
        let tiles = if self.wgmma { 4 } else { 2 };
        (tiles * tile_bytes(self.dtype)) as u32
    }

    /// The backward's dynamic shared memory: the own tile, the dz tile and a slot per feature
    /// chunk of a group, plus the slots' transposes for wgmma (its second product's B operand).
    fn backward_shared_bytes(&self, chunks: usize) -> u32 {
        let copies = if self.wgmma { 2 } else { 1 };
        ((2 + copies * chunks.min(GROUP_CHUNKS)) * tile_bytes(self.dtype)) as u32
    }
}

/// A device array, how many of its floats to sum, and their weight.
type Span = (KernelArg, usize, f64);

/// `out[0] = factor * (the weighted sum of the spans' floats)` as `dtype`, in a fixed order.
fn reduce(gpu: &GpuBackend, spans: [Span; 3], factor: f64, dtype: DType) -> Result<Tensor> {
    let out = gpu.uninit([1], dtype)?;
    let mut args = Vec::with_capacity(11);
    for (array, count, weight) in spans {
        args.extend([array, int(count, "partial sums")?, KernelArg::F32(weight as f32)]);
    }
    args.extend([KernelArg::F32(factor as f32), ptr(&out)?]);
    let floats: usize = spans.iter().map(|span| span.1).sum();
    gpu.launch(
        &kernel_for("infonce_reduce", dtype)?,
        LaunchConfig::linear(1, REDUCE_THREADS, 0),
        &args,
        Footprint::of(&[], &[&out]).reads(floats * size_of::<f32>()),
    )?;
    Ok(out)
}

/// The log-sum-exp over the rows of `parts` [p, n] (ranks or splits), in row order: [n].
fn combine(gpu: &GpuBackend, parts: &Tensor) -> Result<Tensor> {
    let (p, n) = (parts.dims()[0], parts.dims()[1]);
    if p == 1 {
        return parts.view_as([n].into());
    }
    let out = gpu.uninit([n], DType::F32)?;
    gpu.launch(
        "infonce_combine_f32",
        LaunchConfig::linear(element_blocks(n), ELEMENT_THREADS, 0),
        &[ptr(parts)?, int(p, "partial lse rows")?, int(n, "columns")?, ptr(&out)?],
        Footprint::of(&[parts], &[&out]),
    )?;
    Ok(out)
}

/// The sum over the splits of fp32 `parts` [splits, rows, d], in split order, as `dtype`.
fn sum_splits(gpu: &GpuBackend, parts: &Tensor, dtype: DType) -> Result<Tensor> {
    let (splits, rows, d) = (parts.dims()[0], parts.dims()[1], parts.dims()[2]);
    let out = gpu.uninit([rows, d], dtype)?;
    gpu.launch(
        &kernel_for("infonce_sum_splits", dtype)?,
        LaunchConfig::linear(element_blocks(rows * d), ELEMENT_THREADS, 0),
        &[ptr(parts)?, int(splits, "row splits")?, int(rows * d, "gradient elements")?, ptr(&out)?],
        Footprint::of(&[parts], &[&out]),
    )?;
    Ok(out)
}

pub(super) fn infonce(gpu: &GpuBackend, pairs: InfoNceShard<'_>) -> Result<InfoNceOut> {
    pairs.check_whole("infonce")?;
    let partial = infonce_partial(gpu, pairs)?;
    let single_rank = partial.col_lse.view_as([1, pairs.txt.dims()[0]].into())?;
    infonce_finish(gpu, &partial, &single_rank)
}

pub(super) fn infonce_partial(gpu: &GpuBackend, shard: InfoNceShard<'_>) -> Result<InfoNcePartial> {
    shard.check("infonce_partial")?;
    let plan = Plan::of(&shard)?;
    let row_lse_parts = gpu.uninit([plan.row_splits, plan.n_local], DType::F32)?;
    let col_lse = gpu.uninit([plan.n], DType::F32)?;
    let positive_terms = gpu.uninit([plan.row_partials()], DType::F32)?;
    let mut args = vec![ptr(shard.img)?, ptr(shard.txt)?, ptr(shard.logit_scale)?, max_scale_arg(shard.max_scale)];
    args.extend(plan.args(&shard)?);
    args.extend([ptr(&row_lse_parts)?, ptr(&col_lse)?, ptr(&positive_terms)?]);
    let dtype = shard.img.dtype();
    let variant = Variant::of(gpu, dtype)?;
    gpu.launch(
        &variant.kernel("infonce_fwd")?,
        LaunchConfig {
            grid: [plan.grid_x, 2, 1],
            block: [FORWARD_THREADS, 1, 1],
            shared_bytes: variant.forward_shared_bytes(),
        },
        &args,
        Footprint::of(&[shard.img, shard.txt, shard.logit_scale], &[&row_lse_parts, &col_lse, &positive_terms]),
    )?;
    let row_lse = combine(gpu, &row_lse_parts)?;
    Ok(InfoNcePartial { row_lse, col_lse, positive_terms, offset: shard.offset, weights: shard.weights, dtype })
}

pub(super) fn infonce_finish(gpu: &GpuBackend, partial: &InfoNcePartial, col_partials: &Tensor) -> Result<InfoNceOut> {
    partial.check_gathered("infonce_finish", col_partials)?;
    if partial.positive_terms.dtype() != DType::F32 {
        return Err(Error::dtype("infonce_finish", "the GPU kernels take the fp32 partials of their forward"));
    }
    let n = col_partials.dims()[1];
    let col_lse = combine(gpu, col_partials)?;
    // The rank's share: its rows' terms and the log-sum-exps of its columns offset .. offset + n_local.
    let n_local = partial.row_lse.numel();
    let own_columns = device_ptr(&col_lse)? + (partial.offset * std::mem::size_of::<f32>()) as u64;
    let ContrastWeights { rows, columns } = partial.weights;
    let spans = [
        (ptr(&partial.positive_terms)?, partial.positive_terms.numel(), partial.weights.positives()),
        (ptr(&partial.row_lse)?, n_local, rows),
        (KernelArg::Ptr(own_columns), n_local, columns),
    ];
    let loss = reduce(gpu, spans, 1.0 / n as f64, partial.dtype)?;
    Ok(InfoNceOut { loss, row_lse: partial.row_lse.clone(), col_lse })
}

pub(super) fn infonce_backward(
    gpu: &GpuBackend,
    shard: InfoNceShard<'_>,
    out: &InfoNceOut,
    dloss: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "infonce_backward";
    shard.check(OP)?;
    let plan = Plan::of(&shard)?;
    let (n_local, n, d) = shard.dims();
    let dtype = shard.img.dtype();
    if out.row_lse.dtype() != DType::F32 || out.col_lse.dtype() != DType::F32 {
        return Err(Error::dtype(OP, "the GPU kernels take the fp32 log-sum-exps of their forward"));
    }
    if out.row_lse.numel() != n_local || out.col_lse.numel() != n {
        let (rows, cols) = (out.row_lse.numel(), out.col_lse.numel());
        return Err(Error::shape(
            OP,
            format!("log-sum-exps of {rows} rows and {cols} columns, logits {n_local} x {n}"),
        ));
    }
    if dloss.dtype() != dtype {
        return Err(Error::dtype(OP, format!("dloss is {}, the features {dtype}", dloss.dtype())));
    }
    let chunks = d.div_ceil(TILE);
    let groups = u32::try_from(chunks.div_ceil(GROUP_CHUNKS))
        .ok()
        .filter(|&g| g <= 65_535)
        .ok_or_else(|| Error::invalid("infonce", format!("feature width {d} is too large")))?;
    let dtxt = gpu.uninit([n, d], dtype)?;
    let dscale_partials = gpu.uninit([plan.row_partials()], DType::F32)?;
    // With split texts the row direction writes fp32 parts of d img ([splits, n_local, d]), summed
    // below; the kernel takes the pointer it does not write as null.
    let split = plan.row_splits > 1;
    let dimg = match split {
        true => gpu.uninit([plan.row_splits, n_local, d], DType::F32)?,
        false => gpu.uninit([n_local, d], dtype)?,
    };
    let (dimg_arg, parts_arg) = match split {
        true => (KernelArg::Ptr(0), ptr(&dimg)?),
        false => (ptr(&dimg)?, KernelArg::Ptr(0)),
    };
    let mut args = vec![
        ptr(shard.img)?,
        ptr(shard.txt)?,
        ptr(shard.logit_scale)?,
        max_scale_arg(shard.max_scale),
        ptr(dloss)?,
        ptr(&out.row_lse)?,
        ptr(&out.col_lse)?,
        KernelArg::F32(shard.weights.rows as f32),
        KernelArg::F32(shard.weights.columns as f32),
    ];
    args.extend(plan.args(&shard)?);
    args.extend([dimg_arg, ptr(&dtxt)?, parts_arg, ptr(&dscale_partials)?]);
    let variant = Variant::of(gpu, dtype)?;
    gpu.launch(
        &variant.kernel("infonce_bwd")?,
        LaunchConfig {
            grid: [plan.grid_x, groups, 2],
            block: [BACKWARD_THREADS, 1, 1],
            shared_bytes: variant.backward_shared_bytes(chunks),
        },
        &args,
        Footprint::of(
            &[shard.img, shard.txt, shard.logit_scale, dloss, &out.row_lse, &out.col_lse],
            &[&dimg, &dtxt, &dscale_partials],
        ),
    )?;
    let dimg = if split { sum_splits(gpu, &dimg, dtype)? } else { dimg };
    let partials = (ptr(&dscale_partials)?, dscale_partials.numel(), 1.0);
    let none = (partials.0, 0, 0.0);
    let dscale = reduce(gpu, [partials, none, none], 1.0, shard.logit_scale.dtype())?;
    Ok((dimg, dtxt, dscale))
}
