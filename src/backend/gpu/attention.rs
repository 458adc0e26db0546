//! Rust side of kernels/attention.cu and kernels/attention_exact.cu: attention on packed qkv.
//!
//! bf16 tensors run the flash-style tensor-core kernels (head dims 32 and 64, in the tile shape
//! [`AttnTiles::choose`] picks for the sequence lengths, or the one a backend made by
//! [`GpuBackend::with_attention_tiles`] forces); f32 tensors run
//! the exact SIMT kernels (any head dim up to 128, fp32 math throughout, so f32 training
//! matches the CPU reference to f32 rounding). Forward is one launch; backward is two
//! (D = rowsum(dO * O), then dK/dV and dQ in one grid, each block writing its own part of dqkv,
//! so the result is deterministic). The saved log-sum-exp is fp32 whatever the tensors' dtype.
//! Grids run over (sequence, head) pairs, so varlen packed sequences
//! ([`AttnMask::sequence_offsets`]) of any lengths share one launch; a tile past the end of a
//! shorter sequence exits at once.

use std::cell::Cell;
use std::cmp::Reverse;
use std::fmt;
use std::str::FromStr;

use super::buffer::Scratch;
use super::context::{int, kernel_for, ptr};
use super::footprint::Footprint;
use super::{GpuBackend, KernelArg, LaunchConfig};
use crate::backend::{AttnMask, SegmentMask};
use crate::error::{Error, Result};
use crate::tensor::{DType, Table, Tensor};

/// The exact kernels: rows of a block (one per warp), and its threads.
const EXACT_ROWS: usize = 8;
const EXACT_THREADS: u32 = 256;
/// The exact kernels come for head dims up to 32, 64, 96 and 128.
const EXACT_MAX_HEAD_DIM: usize = 128;
/// The delta kernel's block: 8 warps, one (token, head) row each.
const DELTA_THREADS: u32 = 256;
/// Launches of fewer blocks leave part of the GPU idle: two blocks on each of an H100's 132 SMs.
const FILL_BLOCKS: usize = 2 * 132;

/// Whether the GPU has attention kernels for heads of `head_dim` in `dtype` (the reason when not):
/// checked by every call, and by a training step's setup before its first step.
pub fn check_head_dim(dtype: DType, head_dim: usize, heads: usize) -> Result<()> {
    let reason = match dtype {
        DType::BF16 if head_dim == 32 || head_dim == 64 => return Ok(()),
        DType::BF16 => {
            format!("the bf16 GPU kernels are built for head dims 32 and 64, not {head_dim} ({heads} heads)")
        }
        DType::F32 if (1..=EXACT_MAX_HEAD_DIM).contains(&head_dim) => return Ok(()),
        DType::F32 => {
            format!("the f32 GPU kernels take head dims 1 to {EXACT_MAX_HEAD_DIM}, not {head_dim} ({heads} heads)")
        }
        DType::F64 => return Err(Error::dtype("attention", "GPU kernels compute in f32 or bf16, not f64")),
    };
    Err(Error::invalid("attention", reason))
}

/// The tile shape of a bf16 tensor-core kernel (kernels/attention.cu): a block owns `rows` rows
/// (queries; keys for dK and dV), 16 per warp, and streams the other side `cols` rows per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnTiles {
    pub rows: usize,
    pub cols: usize,
}

impl AttnTiles {
    /// Every shape the kernels come in (ATTENTION_TILE_SHAPES in kernels/attention.cu).
    pub const ALL: [AttnTiles; 4] = [
        AttnTiles { rows: 64, cols: 64 },
        AttnTiles { rows: 64, cols: 32 },
        AttnTiles { rows: 32, cols: 64 },
        AttnTiles { rows: 32, cols: 32 },
    ];

    /// 32 threads per 16 own rows.
    fn threads(self) -> u32 {
        2 * self.rows as u32
    }

    /// Query-key pairs one (sequence, head) of `len` tokens computes with these tiles, padding
    /// included: each own tile against the streamed tiles up to the last key its last row sees
    /// (all of them, or up to the diagonal under the causal mask). Backward's dK/dV half, keys
    /// against query tiles, pads the same way by symmetry. Key padding is left out: it cuts the
    /// work of every shape alike.
    fn padded_work(self, len: usize, causal: bool) -> usize {
        (0..len.div_ceil(self.rows))
            .map(|tile| {
                let keys = if causal { len.min((tile + 1) * self.rows) } else { len };
                self.rows * keys.next_multiple_of(self.cols)
            })
            .sum()
    }

    /// The shape for `sequences` (length, whether causal) over `heads` heads: the least padded work, where
    /// CLIP's short sequences differ most (77 tokens: 128 x 128 pairs with 64 x 64 tiles, 96 x 96
    /// with 32 x 32); on a tie, more blocks when even the largest tiles launch too few to fill
    /// the GPU, otherwise fewer (a block stages every key tile it sees, so smaller own tiles
    /// stage keys more often); then wider streamed tiles (fewer steps and barriers). A model
    /// from the shapes alone: `cargo bench --bench gpu_kernels` times every shape at CLIP's
    /// lengths, and a table of its winners can take this function's place.
    fn choose(sequences: &[(usize, bool)], heads: usize) -> AttnTiles {
        let longest = sequences.iter().map(|&(len, _)| len).max().unwrap_or(0);
        let blocks = |t: AttnTiles| sequences.len() * heads * longest.div_ceil(t.rows);
        let fills = AttnTiles::ALL.into_iter().map(blocks).min().unwrap_or(0) >= FILL_BLOCKS;
        let rank = |t: AttnTiles| {
            let work: usize = sequences.iter().map(|&(len, causal)| t.padded_work(len, causal)).sum();
            let blocks = blocks(t) as i64;
            let blocks = if fills { blocks } else { -blocks };
            (work, blocks, Reverse(t.cols))
        };
        AttnTiles::ALL.into_iter().min_by_key(|&t| rank(t)).expect("there are tile shapes")
    }
}

thread_local! {
    /// The tile shape [`with_tiles`] forces on this thread's bf16 attention calls.
    static FORCED: Cell<Option<AttnTiles>> = const { Cell::new(None) };
}

/// Runs `f` with every bf16 attention call of this thread, on any GPU backend, in `tiles`
/// (`msclip bench step --kernel attention=q32k32`): a kernel variant measured in a whole step
/// without touching the orchestration. A backend's own forced shape
/// ([`GpuBackend::with_attention_tiles`]) wins over this one.
pub fn with_tiles<R>(tiles: AttnTiles, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<AttnTiles>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.set(self.0);
        }
    }
    let _restore = Restore(FORCED.replace(Some(tiles)));
    f()
}

/// `q<rows>k<cols>`, one of [`AttnTiles::ALL`].
impl FromStr for AttnTiles {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AttnTiles::ALL.into_iter().find(|t| t.to_string() == s).ok_or_else(|| {
            let all: Vec<String> = AttnTiles::ALL.iter().map(|t| t.to_string()).collect();
            format!("no attention tile shape {s:?}; the kernels come in {}", all.join(", "))
        })
    }
}

/// `q<rows>k<cols>`, as in the kernels' names.
impl fmt::Display for AttnTiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "q{}k{}", self.rows, self.cols)
    }
}

/// Which kernels serve a dtype.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernels {
    /// bf16: the tensor-core tiles of attention.cu, in one of their shapes.
    TensorCore(AttnTiles),
    /// f32: the SIMT kernels of attention_exact.cu.
    Exact,
}

/// Shapes of one attention call, and the kernels that run it.
struct Geometry {
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    /// Sequences (batch rows, or packed sequences) and the longest one's length.
    sequences: usize,
    longest: usize,
    kernels: Kernels,
}

impl Geometry {
    /// The call's shapes and kernels: the bf16 kernels in the tile shape `gpu` forces (an error
    /// for f32, whose kernels have none), or else in the one [`AttnTiles::choose`] picks.
    fn of(gpu: &GpuBackend, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<Self> {
        let tiles = gpu.attention_tiles.or(FORCED.get());
        let dims = qkv.dims();
        let head_dim = dims[2] / (3 * heads);
        // The kernels index by the offsets and key lengths: they must fit the tensor.
        mask.check("attention", dims[0], dims[1])?;
        let sequences: Vec<(usize, bool)> =
            mask.sequences(dims[0], dims[1]).iter().enumerate().map(|(s, seq)| (seq.len, mask.is_causal(s))).collect();
        check_head_dim(qkv.dtype(), head_dim, heads)?;
        let kernels = match qkv.dtype() {
            DType::BF16 => Kernels::TensorCore(tiles.unwrap_or_else(|| AttnTiles::choose(&sequences, heads))),
            DType::F32 if tiles.is_some() => {
                return Err(Error::invalid("attention", "tile shapes are those of the bf16 kernels; f32 has none"));
            }
            _ => Kernels::Exact,
        };
        // A captured graph's launches may see longer sequences than these (`longest_bound`).
        let longest = sequences.iter().map(|&(len, _)| len).max().unwrap_or(0).max(mask.longest_bound.unwrap_or(0));
        Ok(Geometry { batch: dims[0], len: dims[1], heads, head_dim, sequences: sequences.len(), longest, kernels })
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn is_empty(&self) -> bool {
        self.batch * self.len * self.heads == 0
    }

    /// `attention_<stage>_d<head dim>_q<rows>k<cols>_bf16`, or `attention_exact_<stage>_d<head dim
    /// rounded up to 32>_f32`.
    fn kernel(&self, stage: &str, dtype: DType) -> Result<String> {
        match self.kernels {
            Kernels::TensorCore(tiles) => kernel_for(&format!("attention_{stage}_d{}_{tiles}", self.head_dim), dtype),
            Kernels::Exact => {
                kernel_for(&format!("attention_exact_{stage}_d{}", self.head_dim.next_multiple_of(32)), dtype)
            }
        }
    }

    /// One block per (sequence, head) and own tile (tensor cores) or 8 rows (exact) of the
    /// longest sequence; `layers` blocks deep.
    fn grid(&self, layers: u32) -> Result<LaunchConfig> {
        let (rows, threads) = match self.kernels {
            Kernels::TensorCore(tiles) => (tiles.rows, tiles.threads()),
            Kernels::Exact => (EXACT_ROWS, EXACT_THREADS),
        };
        let pairs = u32::try_from(self.sequences * self.heads)
            .map_err(|_| Error::invalid("attention", "sequences * heads does not fit a grid dimension"))?;
        let tiles = u32::try_from(self.longest.div_ceil(rows))
            .ok()
            .filter(|&t| t <= 65_535)
            .ok_or_else(|| Error::invalid("attention", format!("sequence length {} is too long", self.longest)))?;
        Ok(LaunchConfig { grid: [pairs, tiles, layers], block: [threads, 1, 1], shared_bytes: 0 })
    }

    /// The arguments every kernel takes after its tensors: `len, heads, offsets, key_lengths,
    /// first_causal, segment_boundary, segment_visibility`, then for the exact kernels `head_dim, scale`.
    fn shape_args(&self, mask: &MaskArgs) -> Result<Vec<KernelArg>> {
        let mut args = vec![int(self.len, "sequence length")?, int(self.heads, "heads")?];
        args.extend(mask.args);
        if self.kernels == Kernels::Exact {
            // 1/sqrt(head_dim) rounded from f64, as the CPU reference computes it.
            let scale = (1.0 / (self.head_dim as f64).sqrt()) as f32;
            args.extend([int(self.head_dim, "head dim")?, KernelArg::F32(scale)]);
        }
        Ok(args)
    }
}

/// The mask as kernel arguments: `offsets, key_lengths, first_causal` (the first sequence
/// under the causal mask: past the last, i32::MAX, when there is no causal mask),
/// `segment_boundary, segment_visibility` ([`SegmentMask::bits`]; without segments, one segment
/// that sees itself), with the tables they point to kept alive for the launch.
struct MaskArgs {
    tables: [Option<Table>; 2],
    args: [KernelArg; 5],
}

impl MaskArgs {
    fn upload(gpu: &GpuBackend, mask: &AttnMask) -> Result<Self> {
        let offsets = match (&mask.offsets_table, &mask.sequence_offsets) {
            (Some(table), _) => Some(table.clone()),
            (None, Some(offsets)) => Some(Table::of_counts(offsets, "sequence offset")?),
            (None, None) => None,
        };
        let lengths = mask.key_lengths.as_deref().map(|l| Table::of_counts(l, "key length")).transpose()?;
        let pointer = |table: &Option<Table>| -> Result<KernelArg> {
            Ok(KernelArg::Ptr(table.as_ref().map(|t| t.device_ptr(gpu.device())).transpose()?.unwrap_or(0)))
        };
        let first_causal = match mask.causal {
            true => int(mask.first_causal_sequence, "first causal sequence")?,
            false => KernelArg::I32(i32::MAX),
        };
        let segments = mask.segments.unwrap_or(SegmentMask::full(0));
        let boundary = int(segments.boundary.min(i32::MAX as usize), "segment boundary")?;
        Ok(MaskArgs {
            args: [pointer(&offsets)?, pointer(&lengths)?, first_causal, boundary, KernelArg::I32(segments.bits())],
            tables: [offsets, lengths],
        })
    }

    /// The bytes of the tables, which the kernels read.
    fn table_bytes(&self) -> usize {
        self.tables.iter().flatten().map(Table::bytes).sum()
    }
}

pub(super) fn attention(gpu: &GpuBackend, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let g = Geometry::of(gpu, qkv, heads, mask)?;
    let out = gpu.uninit([g.batch, g.len, g.width()], qkv.dtype())?;
    let lse = gpu.uninit([g.batch, g.heads, g.len], DType::F32)?;
    if g.is_empty() {
        return Ok((out, lse));
    }
    let mask = MaskArgs::upload(gpu, mask)?;
    let mut args = vec![ptr(qkv)?, ptr(&out)?, ptr(&lse)?];
    args.extend(g.shape_args(&mask)?);
    let footprint = Footprint::of(&[qkv], &[&out, &lse]).reads(mask.table_bytes());
    gpu.launch(&g.kernel("fwd", qkv.dtype())?, g.grid(1)?, &args, footprint)?;
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
    let g = Geometry::of(gpu, qkv, heads, mask)?;
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
        Footprint::of(&[out, dout], &[]).writes(delta.bytes()),
    )?;
    let mask = MaskArgs::upload(gpu, mask)?;
    let mut args = vec![ptr(qkv)?, ptr(dout)?, ptr(lse)?, KernelArg::Ptr(delta.ptr()), ptr(&dqkv)?];
    args.extend(g.shape_args(&mask)?);
    // z = 0: dK and dV; z = 1: dQ.
    let footprint = Footprint::of(&[qkv, dout, lse], &[&dqkv]).reads(delta.bytes() + mask.table_bytes());
    gpu.launch(&g.kernel("bwd", qkv.dtype())?, g.grid(2)?, &args, footprint)?;
    Ok(dqkv)
}

/// The tile shape the bf16 kernels run a call in (None for f32 tensors).
pub(super) fn tiles(gpu: &GpuBackend, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<Option<AttnTiles>> {
    Ok(match Geometry::of(gpu, qkv, heads, mask)?.kernels {
        Kernels::TensorCore(tiles) => Some(tiles),
        Kernels::Exact => None,
    })
}
