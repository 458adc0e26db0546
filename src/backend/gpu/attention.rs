//! Rust side of kernels/attention.cu: flash-style attention on packed qkv.
//!
//! Forward is one launch; backward is two (D = rowsum(dO * O), then dK/dV per key tile and dQ
//! per query tile in one grid, each block writing its own part of dqkv, so the result is
//! deterministic). The saved
//! log-sum-exp is fp32 whatever the tensors' dtype, and f32 tensors run through the same bf16
//! tensor-core products (see the kernel file for the precision this gives).

use super::buffer::Scratch;
use super::context::{int, kernel_for, ptr};
use super::{GpuBackend, KernelArg, LaunchConfig};
use crate::backend::AttnMask;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Rows of a query or key tile, and threads of a tile's block (4 warps of 16 rows).
const TILE: usize = 64;
const TILE_THREADS: u32 = 128;
/// The delta kernel's block: 8 warps, one (token, head) row each.
const DELTA_THREADS: u32 = 256;

/// Shapes of one attention call.
struct Geometry {
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
}

impl Geometry {
    fn of(qkv: &Tensor, heads: usize) -> Result<Self> {
        let dims = qkv.dims();
        let head_dim = dims[2] / (3 * heads);
        if head_dim != 32 && head_dim != 64 {
            return Err(Error::invalid(
                "attention",
                format!("the GPU kernels are built for head dims 32 and 64, not {head_dim} ({heads} heads)"),
            ));
        }
        Ok(Geometry { batch: dims[0], len: dims[1], heads, head_dim })
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn is_empty(&self) -> bool {
        self.batch * self.len * self.heads == 0
    }

    /// `attention_<stage>_d<head dim>_<dtype>`.
    fn kernel(&self, stage: &str, dtype: DType) -> Result<String> {
        kernel_for(&format!("attention_{stage}_d{}", self.head_dim), dtype)
    }

    /// One block per (batch, head) and 64-row tile.
    fn tiles(&self) -> Result<LaunchConfig> {
        let pairs = u32::try_from(self.batch * self.heads)
            .map_err(|_| Error::invalid("attention", "batch * heads does not fit a grid dimension"))?;
        let tiles = u32::try_from(self.len.div_ceil(TILE))
            .ok()
            .filter(|&t| t <= 65_535)
            .ok_or_else(|| Error::invalid("attention", format!("sequence length {} is too long", self.len)))?;
        Ok(LaunchConfig { grid: [pairs, tiles, 1], block: [TILE_THREADS, 1, 1], shared_bytes: 0 })
    }
}

/// The mask as kernel arguments: the device copy of the key lengths (kept alive for the launch)
/// and `key_lengths, causal`.
struct MaskArgs {
    _lengths: Option<Scratch>,
    args: [KernelArg; 2],
}

impl MaskArgs {
    fn upload(gpu: &GpuBackend, mask: &AttnMask) -> Result<Self> {
        let lengths = match &mask.key_lengths {
            Some(lengths) => {
                let as_i32 = lengths
                    .iter()
                    .map(|&l| i32::try_from(l).map_err(|_| Error::invalid("attention", format!("key length {l}"))))
                    .collect::<Result<Vec<i32>>>()?;
                Some(gpu.upload(&as_i32)?)
            }
            None => None,
        };
        let pointer = KernelArg::Ptr(lengths.as_ref().map_or(0, Scratch::ptr));
        Ok(MaskArgs { args: [pointer, KernelArg::I32(i32::from(mask.causal))], _lengths: lengths })
    }
}

pub(super) fn attention(gpu: &GpuBackend, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let g = Geometry::of(qkv, heads)?;
    let out = gpu.uninit([g.batch, g.len, g.width()], qkv.dtype())?;
    let lse = gpu.uninit([g.batch, g.heads, g.len], DType::F32)?;
    if g.is_empty() {
        return Ok((out, lse));
    }
    let mask = MaskArgs::upload(gpu, mask)?;
    let mut args = vec![ptr(qkv)?, ptr(&out)?, ptr(&lse)?, int(g.len, "sequence length")?, int(heads, "heads")?];
    args.extend(mask.args);
    gpu.launch(&g.kernel("fwd", qkv.dtype())?, g.tiles()?, &args)?;
    Ok((out, lse))
}

pub(super) fn attention_backward(
    gpu: &GpuBackend,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
    mask: &AttnMask,
) -> Result<Tensor> {
    let g = Geometry::of(qkv, heads)?;
    if lse.dtype() != DType::F32 {
        return Err(Error::dtype("attention_backward", "the GPU kernels take the fp32 log-sum-exp of their forward"));
    }
    let dqkv = gpu.uninit(qkv.dims().to_vec(), qkv.dtype())?;
    if g.is_empty() {
        return Ok(dqkv);
    }
    let rows = g.batch * g.len * g.heads;
    let delta = Scratch::uninit(gpu.device(), rows * std::mem::size_of::<f32>())?;
    let delta_config = LaunchConfig::linear(rows.div_ceil((DELTA_THREADS / 32) as usize) as u32, DELTA_THREADS, 0);
    gpu.launch(
        &kernel_for("attention_bwd_delta", qkv.dtype())?,
        delta_config,
        &[
            ptr(out)?,
            ptr(dout)?,
            KernelArg::Ptr(delta.ptr()),
            int(g.len, "sequence length")?,
            int(heads, "heads")?,
            int(g.head_dim, "head dim")?,
            int(rows, "attention rows")?,
        ],
    )?;
    let tiles = g.tiles()?;
    let mask = MaskArgs::upload(gpu, mask)?;
    let mut args = vec![
        ptr(qkv)?,
        ptr(dout)?,
        ptr(lse)?,
        KernelArg::Ptr(delta.ptr()),
        ptr(&dqkv)?,
        int(g.len, "sequence length")?,
        int(heads, "heads")?,
    ];
    args.extend(mask.args);
    // z = 0: dK and dV per key tile; z = 1: dQ per query tile.
    let config = LaunchConfig { grid: [tiles.grid[0], tiles.grid[1], 2], ..tiles };
    gpu.launch(&g.kernel("bwd", qkv.dtype())?, config, &args)?;
    Ok(dqkv)
}
