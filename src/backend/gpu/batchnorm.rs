//! Rust side of kernels/batchnorm.cu: BatchNorm2d, with a ReLU after it fused in on request.
//! The batch statistics and the backward reductions run one block per (channel, chunk of the
//! channel's N*H*W elements), handing fp32 partial sums from one launch to the next; with given
//! statistics, one thread per element. The forward also returns the fp32 per-channel scale and
//! shift it applied, from which a fused ReLU's backward recomputes its mask.

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{blocks_for, int, kernel_for, ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::elementwise::pack_width;
use super::footprint::Footprint;
use crate::backend::BatchNormOut;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// `BN_THREADS` in kernels/batchnorm.cu.
const THREADS: u32 = 256;
/// A chunk holds at least this many elements (32 per thread) unless the channel is smaller...
const MIN_CHUNK: usize = 8192;
/// ...and a channel has at most this many chunks, so one block reduces a channel's partials
/// with one load per thread.
const MAX_CHUNKS: usize = THREADS as usize;

/// How the reductions split each channel: a function of the shape alone, so the statistics do
/// not depend on the device.
#[derive(Clone, Copy)]
struct Chunks {
    channels: usize,
    count: usize,
    chunks: usize,
    per: usize,
    /// Elements per access (`BnShape::pack`): 16 or 8 bytes where H*W is a multiple, so that no
    /// pack crosses from one sample's plane into the next, else 1.
    pack: usize,
}

impl Chunks {
    fn of(x: &Tensor) -> Self {
        let d = x.dims();
        let (count, plane) = (d[0] * d[2] * d[3], d[2] * d[3]);
        let widest = pack_width(x.dtype());
        let pack = [widest, widest / 2].into_iter().find(|&p| p > 1 && plane % p == 0).unwrap_or(1);
        let chunks = count.div_ceil(MIN_CHUNK).clamp(1, MAX_CHUNKS);
        // Whole packs per chunk; rounding up may leave fewer chunks than asked for.
        let per = count.div_ceil(chunks).next_multiple_of(pack).max(1);
        Chunks { channels: d[1], count, chunks: count.div_ceil(per).max(1), per, pack }
    }

    /// A block per chunk, of as many whole warps as the chunk has packs, up to `THREADS`: a
    /// small plane (7x7 at a small batch) leaves no idle warps loading the channel's parameters.
    /// Chunks of several blocks' worth (every split channel) get `THREADS`.
    fn blocks(&self) -> Result<LaunchConfig> {
        let blocks = u32::try_from(self.channels * self.chunks).map_err(|_| {
            Error::invalid("batch_norm", format!("{} channels exceed one launch's grid", self.channels))
        })?;
        let threads = self.per.div_ceil(self.pack).next_multiple_of(32).min(THREADS as usize);
        Ok(LaunchConfig::linear(blocks, threads as u32, 0))
    }

    /// One fp32 partial per block.
    fn partials(&self, gpu: &GpuBackend) -> Result<Scratch> {
        Scratch::uninit(gpu.device(), self.channels * self.chunks * 4)
    }
}

/// The (batch, channels, H*W) ints the kernels take after their pointers.
fn dims(x: &Tensor) -> Result<[KernelArg; 3]> {
    let d = x.dims();
    int(x.numel(), "batch_norm elements")?;
    Ok([int(d[0], "batch")?, int(d[1], "channels")?, int(d[2] * d[3], "H*W")?])
}

/// `BN_SHAPE_PARAMS`: the dims, then the chunking and the pack width.
fn shape(x: &Tensor, chunks: Chunks) -> Result<Vec<KernelArg>> {
    let mut args = dims(x)?.to_vec();
    args.extend([int(chunks.chunks, "batch_norm chunks")?, int(chunks.per, "batch_norm chunk")?]);
    args.push(int(chunks.pack, "batch_norm pack")?);
    Ok(args)
}

/// Launches `<base>_<dtype>` on the pointers of `inputs`, then the partial tables `reads` and
/// `writes` (in that order), then `outputs`, then `tail`.
fn launch(
    gpu: &GpuBackend,
    base: &str,
    config: LaunchConfig,
    [inputs, outputs]: [&[&Tensor]; 2],
    [reads, writes]: [&[&Scratch]; 2],
    tail: &[KernelArg],
) -> Result<()> {
    let mut args = inputs.iter().map(|t| ptr(t)).collect::<Result<Vec<_>>>()?;
    args.extend(reads.iter().chain(writes).map(|s| KernelArg::Ptr(s.ptr())));
    for t in outputs {
        args.push(ptr(t)?);
    }
    args.extend_from_slice(tail);
    let bytes = |tables: &[&Scratch]| tables.iter().map(|s| s.bytes()).sum::<usize>();
    let footprint = Footprint::of(inputs, outputs).reads(bytes(reads)).writes(bytes(writes));
    gpu.launch(&kernel_for(base, inputs[0].dtype())?, config, &args, footprint)
}

/// The [2, C] fp32 table of per-channel scales and shifts a forward writes: zeros where the
/// forward has no element to launch for, so a backward of an empty tensor reads defined memory.
fn affine_table(gpu: &GpuBackend, c: usize, launched: bool) -> Result<Tensor> {
    if launched { gpu.uninit([2, c], DType::F32) } else { gpu.zeros([2, c], DType::F32) }
}

pub(super) fn batch_norm_train(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOut> {
    let (c, dtype) = (x.dims()[1], x.dtype());
    let chunks = Chunks::of(x);
    let launched = c > 0 && chunks.count > 0;
    let out = BatchNormOut {
        y: gpu.uninit(x.shape().clone(), dtype)?,
        mean: gpu.uninit([c], dtype)?,
        var: gpu.uninit([c], dtype)?,
        affine: affine_table(gpu, c, launched)?,
    };
    if launched {
        let (config, shape, eps) = (chunks.blocks()?, shape(x, chunks)?, KernelArg::F32(eps as f32));
        let (sums, squares) = (chunks.partials(gpu)?, chunks.partials(gpu)?);
        launch(gpu, "bn_shifted_sums", config, [&[x], &[]], [&[], &[&sums, &squares]], &shape)?;
        let outputs: &[&Tensor] = &[&out.y, &out.mean, &out.var, &out.affine];
        let tail = [shape.as_slice(), &[eps, KernelArg::I32(i32::from(relu))]].concat();
        launch(gpu, "bn_normalise", config, [&[x, gamma, beta], outputs], [&[&sums, &squares], &[]], &tail)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_eval(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOut> {
    let y = gpu.uninit(x.shape().clone(), x.dtype())?;
    let affine = affine_table(gpu, x.dims()[1], y.numel() > 0)?;
    if y.numel() > 0 {
        let config = LaunchConfig::linear(blocks_for(y.numel(), THREADS), THREADS, 0);
        let tail = [dims(x)?.as_slice(), &[KernelArg::F32(eps as f32), KernelArg::I32(i32::from(relu))]].concat();
        launch(gpu, "bn_eval", config, [&[x, gamma, beta, mean, var], &[&y, &affine]], [&[], &[]], &tail)?;
    }
    Ok(BatchNormOut { y, mean: mean.clone(), var: var.clone(), affine })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_backward(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    affine: &Tensor,
    dy: &Tensor,
    eps: f64,
    batch_stats: bool,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (c, dtype) = (x.dims()[1], x.dtype());
    let dx = gpu.uninit(x.shape().clone(), dtype)?;
    let (dgamma, dbeta) = (gpu.uninit([c], dtype)?, gpu.uninit([c], dtype)?);
    let chunks = Chunks::of(x);
    if c > 0 && chunks.count > 0 {
        let (config, shape) = (chunks.blocks()?, shape(x, chunks)?);
        let (dy_sums, dy_xhat_sums) = (chunks.partials(gpu)?, chunks.partials(gpu)?);
        let tail = [shape.as_slice(), &[KernelArg::F32(eps as f32), KernelArg::I32(i32::from(relu))]].concat();
        let sums: &[&Scratch] = &[&dy_sums, &dy_xhat_sums];
        launch(gpu, "bn_backward_sums", config, [&[x, mean, var, affine, dy], &[]], [&[], sums], &tail)?;
        let tail = [tail.as_slice(), &[KernelArg::I32(i32::from(batch_stats))]].concat();
        let inputs: &[&Tensor] = &[x, gamma, mean, var, affine, dy];
        launch(gpu, "bn_backward_dx", config, [inputs, &[&dx, &dgamma, &dbeta]], [sums, &[]], &tail)?;
    }
    Ok((dx, dgamma, dbeta))
}
