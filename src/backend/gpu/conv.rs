//! Rust side of kernels/conv.cu: 2-D convolution as im2col + the driver's batched GEMM over
//! the groups, with dedicated kernels for depthwise convolutions and plain GEMMs for pointwise
//! (1x1, stride 1, unpadded, ungrouped) ones.
//!
//! The patch matrix has one of two layouts ([`Columns`]). Channel-major, the patches of the
//! whole batch form one [C_in*kh*kw, N*Ho*Wo] matrix whose row blocks are the groups, so a
//! single GEMM batched over the groups computes every sample at once; `swap_outer` converts
//! between NCHW and channel-major around it, and the weight gradient is a GEMM whose reduction
//! (over N*Ho*Wo) runs inside one product. Sample-major ([N, C_in*kh*kw, Ho*Wo], ungrouped
//! convs on planes of [`PER_SAMPLE_MIN_PLANE`] pixels or more), GEMMs batched over the samples
//! with the weight shared read and write NCHW as it lies (y[n] = W col[n], dcol[n] = W^T
//! dy[n]): no swap. col2im and the depthwise dW kernel reduce in a fixed order: the backward
//! pass uses no float atomics and is deterministic.
//!
//! A pointwise conv needs no im2col at all: its patch matrix is x itself, sample-major, so it
//! runs the per-sample GEMMs on x. Per-sample routes take the weight gradient as per-sample
//! products summed in a fixed order, or go channel-major where those products would move
//! more bytes than the swaps ([`sums_per_sample_products`]).

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{blocks_for, device_ptr, int, kernel_for, ptr};
use super::driver::{GemmEpilogue, GemmSpec, KernelArg, LaunchConfig};
use super::elementwise::{column_sums, warp_per_row};
use super::footprint::Footprint;
use super::matmul::gemm_type;
use crate::backend::Conv2dGeometry;
use crate::backend::cpu::conv::Dims;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// `CONV_THREADS` in kernels/conv.cu.
const THREADS: u32 = 256;

/// Depthwise kernels of this many taps or more run forward with a warp per output pixel
/// (`dwconv_fwd_warp`): a warp then has a tap per lane.
const WARP_FORWARD_TAPS: usize = 32;

/// One input and one output channel per group: the dedicated depthwise kernels apply.
fn is_depthwise(d: &Dims) -> bool {
    d.groups == d.c && d.co == d.c
}

/// A 1x1 kernel at stride 1, unpadded and ungrouped: each output pixel is W times its input
/// pixel's channels, so per sample y[n] [C_out, H*W] = W [C_out, C_in] @ x[n] [C_in, H*W].
fn is_pointwise(d: &Dims) -> bool {
    d.kh == 1 && d.kw == 1 && d.stride == 1 && d.pad == 0 && d.groups == 1
}

/// Columns of the im2col matrix: one per output pixel of the batch.
fn columns(d: &Dims) -> usize {
    d.n * d.spatial_out()
}

/// How a dense or grouped conv lays out its patch matrix, and with it how its GEMMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    /// [C_in*kh*kw, N*Ho*Wo]: one GEMM over the batch (batched over the groups), its output
    /// channel-major and swapped to NCHW; dy swapped channel-major for the backward.
    ChannelMajor,
    /// [N, C_in*kh*kw, Ho*Wo]: GEMMs batched over the samples with the weight shared, on NCHW
    /// as it lies.
    SampleMajor,
}

/// Output planes of at least this many pixels run an ungrouped conv's GEMMs per sample. A
/// sample's columns then fill 8 or more tiles of 64, so rounding each plane up to whole tiles
/// wastes under an eighth of the work; on smaller planes (14x14 and 7x7 at ViT-B scale) the
/// tiles would run a quarter empty, and the channel-major GEMM, whose tiles run across
/// samples, is worth its swaps.
const PER_SAMPLE_MIN_PLANE: usize = 512;

/// The layout of a non-pointwise conv's forward.
fn forward_columns(d: &Dims) -> Columns {
    match d.groups == 1 && d.spatial_out() >= PER_SAMPLE_MIN_PLANE {
        true => Columns::SampleMajor,
        false => Columns::ChannelMajor,
    }
}

/// The layout of a non-pointwise conv's backward: per sample where the forward is, unless its
/// weight gradient's per-sample products would outweigh swapping dy.
fn backward_columns(d: &Dims) -> Columns {
    match forward_columns(d) == Columns::SampleMajor && sums_per_sample_products(d) {
        true => Columns::SampleMajor,
        false => Columns::ChannelMajor,
    }
}

/// The ten ints every conv kernel takes after its pointers (`CONV_GEOMETRY_PARAMS`).
fn geometry_args(d: &Dims) -> Result<Vec<KernelArg>> {
    [
        (d.n, "batch"),
        (d.c, "input channels"),
        (d.h, "input height"),
        (d.w, "input width"),
        (d.kh, "kernel height"),
        (d.kw, "kernel width"),
        (d.stride, "stride"),
        (d.pad, "padding"),
        (d.ho, "output height"),
        (d.wo, "output width"),
    ]
    .into_iter()
    .map(|(v, what)| int(v, what))
    .collect()
}

/// The most blocks a grid has along y (CUDA's limit).
const MAX_GRID_Y: usize = 65535;

/// A grid of `rows` rows along y (samples, or the outer index of `swap_outer`), each with one
/// thread per element of a range of `elements`.
fn rows_of(rows: usize, elements: usize, what: &str) -> Result<[u32; 3]> {
    if rows > MAX_GRID_Y {
        return Err(Error::invalid("conv2d", format!("{rows} {what} exceed the {MAX_GRID_Y} rows of a grid")));
    }
    int(elements, "conv elements")?;
    Ok([blocks_for(elements, THREADS), rows as u32, 1])
}

/// The grid of the kernels with one thread per (input channel, pixel) of each sample, for
/// planes of `plane` pixels.
fn per_sample(d: &Dims, plane: usize) -> Result<[u32; 3]> {
    rows_of(d.n, d.c * plane, "samples")
}

/// col2im's grid: at strides 1 and 2 a thread per stride x stride tile of each input channel
/// (col2im_tiles in kernels/conv.cu), else a thread per input pixel.
fn col2im_grid(d: &Dims) -> Result<[u32; 3]> {
    match d.stride {
        1 | 2 => per_sample(d, d.h.div_ceil(d.stride) * d.w.div_ceil(d.stride)),
        _ => per_sample(d, d.h * d.w),
    }
}

/// Launches `<base>_<dtype>` on `tensors` (inputs, then the one output), the geometry and
/// `extra`, with `grid` blocks, or one thread per element of a range of `elements` when `grid`
/// is None.
fn launch(
    gpu: &GpuBackend,
    d: &Dims,
    (base, extra): (&str, &[KernelArg]),
    grid: Option<[u32; 3]>,
    elements: usize,
    tensors: &[&Tensor],
) -> Result<()> {
    int(elements, "conv elements")?;
    let mut args = tensors.iter().map(|t| ptr(t)).collect::<Result<Vec<_>>>()?;
    args.extend(geometry_args(d)?);
    args.extend_from_slice(extra);
    let grid = grid.unwrap_or([blocks_for(elements, THREADS), 1, 1]);
    let config = LaunchConfig { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
    let (output, inputs) = tensors.split_last().expect("a conv kernel has inputs and an output");
    gpu.launch(&kernel_for(base, tensors[0].dtype())?, config, &args, Footprint::of(inputs, &[output]))
}

/// The kernels' `sample_major` argument.
fn layout_arg(layout: Columns) -> KernelArg {
    KernelArg::I32((layout == Columns::SampleMajor).into())
}

/// The patch matrix of the batch in `layout`.
fn im2col(gpu: &GpuBackend, d: &Dims, x: &Tensor, layout: Columns) -> Result<Tensor> {
    let rows = d.c * d.kh * d.kw;
    let shape = match layout {
        Columns::ChannelMajor => vec![rows, columns(d)],
        Columns::SampleMajor => vec![d.n, rows, d.spatial_out()],
    };
    let col = gpu.uninit(shape, x.dtype())?;
    let grid = per_sample(d, d.spatial_out())?;
    launch(gpu, d, ("im2col", &[layout_arg(layout)]), Some(grid), col.numel(), &[x, &col])?;
    Ok(col)
}

/// dx from the patch matrix's gradient `dcol` in `layout`.
fn col2im(gpu: &GpuBackend, d: &Dims, dcol: &Tensor, layout: Columns, x: &Tensor) -> Result<Tensor> {
    let dx = gpu.uninit(x.shape().clone(), x.dtype())?;
    launch(gpu, d, ("col2im", &[layout_arg(layout)]), Some(col2im_grid(d)?), dx.numel(), &[dcol, &dx])?;
    Ok(dx)
}

/// `x` viewed as [a, b, inner] with its outer two dimensions swapped: [b, a, inner] elements
/// in a tensor of shape `shape`.
fn swap_outer(gpu: &GpuBackend, x: &Tensor, (a, b, inner): (usize, usize, usize), shape: &[usize]) -> Result<Tensor> {
    let out = gpu.uninit(shape.to_vec(), x.dtype())?;
    let args = [ptr(x)?, ptr(&out)?, int(a, "rows")?, int(b, "columns")?, int(inner, "inner size")?];
    int(out.numel(), "conv elements")?;
    let config = LaunchConfig { grid: rows_of(b, a * inner, "columns")?, block: [THREADS, 1, 1], shared_bytes: 0 };
    gpu.launch(&kernel_for("swap_outer", x.dtype())?, config, &args, Footprint::of(&[x], &[&out]))?;
    Ok(out)
}

/// `t` ([N, channels, Ho*Wo]: y, dy, or a pointwise conv's x) channel-major:
/// [channels, N*Ho*Wo].
fn channel_major(gpu: &GpuBackend, d: &Dims, t: &Tensor, channels: usize) -> Result<Tensor> {
    swap_outer(gpu, t, (d.n, channels, d.spatial_out()), &[channels, columns(d)])
}

/// `batch` products of `(m, n, k)` on tensors of `dtype`, their entries back to back.
fn gemm_spec(dtype: DType, batch: usize, mnk: (usize, usize, usize), trans: (bool, bool)) -> Result<GemmSpec> {
    Ok(GemmSpec::new(gemm_type("conv2d", dtype)?, batch, mnk, trans))
}

/// `c = op(a) @ op(b)` as `spec` lays the operands out, through the driver (fp32 accumulation).
fn gemm(gpu: &GpuBackend, spec: GemmSpec, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    gpu.driver()?.gemm(spec, device_ptr(a)?, device_ptr(b)?, GemmEpilogue::None, device_ptr(c)?)
}

/// dW_g [cog, patch] = dY_g [cog, N*Ho*Wo] @ col_g^T for every group g, from the channel-major
/// dy and the patch matrix: the reduction over the batch runs inside one product.
fn channel_major_weight_grad(gpu: &GpuBackend, d: &Dims, dy_cm: &Tensor, col: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dw = gpu.uninit(w.shape().clone(), w.dtype())?;
    let spec = gemm_spec(w.dtype(), d.groups, (d.cog(), d.patch(), columns(d)), (false, true))?;
    gemm(gpu, spec, dy_cm, col, &dw)?;
    Ok(dw)
}

/// y[n] = W @ patches[n] for every sample, from a sample-major patch matrix ([N, patch,
/// Ho*Wo]; a pointwise conv's is x): one GEMM batched over the samples, W shared, NCHW out.
fn per_sample_forward(gpu: &GpuBackend, d: &Dims, patches: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = gpu.uninit([d.n, d.co, d.ho, d.wo], patches.dtype())?;
    let spec = gemm_spec(patches.dtype(), d.n, (d.co, d.spatial_out(), d.patch()), (false, false))?.with_shared_a();
    gemm(gpu, spec, w, patches, &y)?;
    Ok(y)
}

/// The sample-major patch matrix's gradient, dpatches[n] = W^T @ dy[n] for every sample (W
/// shared), in a tensor of `shape` (a pointwise conv's is dx itself).
fn per_sample_patch_grad(gpu: &GpuBackend, d: &Dims, w: &Tensor, dy: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let dpatches = gpu.uninit(shape.to_vec(), dy.dtype())?;
    let spec = gemm_spec(dy.dtype(), d.n, (d.patch(), d.spatial_out(), d.co), (true, false))?.with_shared_a();
    gemm(gpu, spec, w, dy, &dpatches)?;
    Ok(dpatches)
}

/// Whether an ungrouped conv's dW = sum over n of dy[n] @ patches[n]^T sums per-sample
/// products rather than taking the channel-major route.
///
/// One GEMM reduces over the batch only where the samples' pixels lie side by side: the
/// channel-major route swaps dy to channel-major, N*Ho*Wo*C_out elements read and written,
/// and for a pointwise conv x as well (its patch matrix; a dense conv's im2col writes either
/// layout at the same cost). A GEMM batched over the samples instead writes N products of
/// C_out*patch elements, which a fixed-order sum reads back, in the same dtype. The products
/// win where they are at most half the swaps' bytes (the margin pays the sum's launches and
/// its fp32 passes); at msclip-s-b32 that is the convs on 112x112 to 28x28 planes but the
/// 3x3 ones at 28x28, and the channel-major route the rest (14x14, 7x7: the stem's last conv,
/// the lateral lifts). The shape alone decides, so the route, and with it the rounding, is
/// the same on every device.
fn sums_per_sample_products(d: &Dims) -> bool {
    let swapped = d.spatial_out() * (d.co + if is_pointwise(d) { d.c } else { 0 });
    2 * d.co * d.patch() <= swapped
}

/// dW as the per-sample products dy[n] @ patches[n]^T ([N, C_out, patch], one GEMM batched
/// over the samples) summed over n in a fixed order (`column_sums`, in fp32, rounded once). In
/// bf16 each product is rounded to bf16 before the sum, one rounding more than the
/// channel-major route's.
fn summed_weight_grad(gpu: &GpuBackend, d: &Dims, patches: &Tensor, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    let partials = gpu.uninit([d.n, d.co, d.patch()], dy.dtype())?;
    let spec = gemm_spec(dy.dtype(), d.n, (d.co, d.patch(), d.spatial_out()), (false, true))?;
    gemm(gpu, spec, dy, patches, &partials)?;
    let dw = gpu.uninit(w.shape().clone(), w.dtype())?;
    column_sums(gpu, (device_ptr(&partials)?, partials.dtype()), [1, d.n, d.co * d.patch()], &dw)?;
    Ok(dw)
}

fn pointwise_backward(
    gpu: &GpuBackend,
    d: &Dims,
    (x, w, dy): (&Tensor, &Tensor, &Tensor),
    need_dx: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let dw = if sums_per_sample_products(d) {
        summed_weight_grad(gpu, d, x, dy, w)?
    } else {
        // x channel-major is the patch matrix of a pointwise conv.
        let (dy_cm, x_cm) = (channel_major(gpu, d, dy, d.co)?, channel_major(gpu, d, x, d.c)?);
        channel_major_weight_grad(gpu, d, &dy_cm, &x_cm, w)?
    };
    let dx = need_dx.then(|| per_sample_patch_grad(gpu, d, w, dy, x.dims())).transpose()?;
    Ok((dx, dw))
}

/// Each depthwise tap-pixel walk (a block of `dwconv_dw_partials`) covers at least this many
/// (tap, output pixel) products, 64 per thread, unless the batch is smaller: a block's fixed
/// costs (its shared-memory sum, its partials) stay small beside its walk, and a B/16 or B/32
/// batch of 256 still makes 1500-20000 blocks for 132 SMs (docs/benchmarks.md).
const DW_PRODUCTS_PER_BLOCK: usize = 16384;

/// How `dwconv_dw_partials` splits the batch: `chunks` runs of `per_chunk` samples (the last
/// shorter), a function of the shape alone, so the weight gradient does not depend on the
/// device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SampleChunks {
    chunks: usize,
    per_chunk: usize,
}

impl SampleChunks {
    fn of(d: &Dims) -> Self {
        let per_sample = (d.kh * d.kw * d.spatial_out()).max(1);
        let per_chunk = DW_PRODUCTS_PER_BLOCK.div_ceil(per_sample).clamp(1, d.n.max(1));
        SampleChunks { chunks: d.n.div_ceil(per_chunk), per_chunk }
    }
}

/// Depthwise dW [C, 1, kh, kw]: fp32 partial sums per (channel, chunk of samples, tap), then
/// their sum over the chunks in a fixed order (kernels/conv.cu).
fn depthwise_weight_grad(gpu: &GpuBackend, d: &Dims, x: &Tensor, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dw = gpu.uninit(w.shape().clone(), w.dtype())?;
    let split = SampleChunks::of(d);
    let taps = d.kh * d.kw;
    if d.c > MAX_GRID_Y {
        return Err(Error::invalid("conv2d", format!("{} channels exceed the {MAX_GRID_Y} rows of a grid", d.c)));
    }
    let partials = Scratch::uninit(gpu.device(), d.c * split.chunks * taps * 4)?;
    // Both at most the batch, which fits an int (checked with the geometry).
    let (chunks, per_chunk) = (int(split.chunks, "sample chunks")?, int(split.per_chunk, "samples per chunk")?);
    int(d.c * split.chunks * taps, "depthwise partials")?;
    let mut args = vec![ptr(x)?, ptr(dy)?, KernelArg::Ptr(partials.ptr())];
    args.extend(geometry_args(d)?);
    args.extend([chunks, per_chunk]);
    let config = LaunchConfig { grid: [split.chunks as u32, d.c as u32, 1], block: [THREADS, 1, 1], shared_bytes: 0 };
    let footprint = Footprint::of(&[x, dy], &[]).writes(partials.bytes());
    gpu.launch(&kernel_for("dwconv_dw_partials", x.dtype())?, config, &args, footprint)?;

    let args = [KernelArg::Ptr(partials.ptr()), ptr(&dw)?, int(d.c, "channels")?, chunks, int(taps, "kernel taps")?];
    let config = LaunchConfig::linear(blocks_for(d.c * taps, THREADS), THREADS, 0);
    let footprint = Footprint::of(&[], &[&dw]).reads(partials.bytes());
    gpu.launch(&kernel_for("dwconv_dw_sum", x.dtype())?, config, &args, footprint)?;
    Ok(dw)
}

pub(super) fn conv2d(gpu: &GpuBackend, x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
    let d = Dims::of(x, w, geo);
    let shape = [d.n, d.co, d.ho, d.wo];
    if x.numel() == 0 || w.numel() == 0 {
        // Every output (if any) is an empty sum.
        return gpu.zeros(shape, x.dtype());
    }
    if is_depthwise(&d) {
        let y = gpu.uninit(shape, x.dtype())?;
        if d.kh * d.kw >= WARP_FORWARD_TAPS {
            let grid = warp_per_row(y.numel()).grid;
            launch(gpu, &d, ("dwconv_fwd_warp", &[]), Some(grid), y.numel(), &[x, w, &y])?;
        } else {
            launch(gpu, &d, ("dwconv_fwd", &[]), None, y.numel(), &[x, w, &y])?;
        }
        return Ok(y);
    }
    if is_pointwise(&d) {
        return per_sample_forward(gpu, &d, x, w);
    }
    let layout = forward_columns(&d);
    let col = im2col(gpu, &d, x, layout)?;
    if layout == Columns::SampleMajor {
        return per_sample_forward(gpu, &d, &col, w);
    }
    // [groups, C_out/groups, patch] @ [groups, patch, N*Ho*Wo]: channel-major output.
    let y_cm = gpu.uninit([d.co, columns(&d)], x.dtype())?;
    gemm(gpu, gemm_spec(x.dtype(), d.groups, (d.cog(), columns(&d), d.patch()), (false, false))?, w, &col, &y_cm)?;
    swap_outer(gpu, &y_cm, (d.co, d.n, d.spatial_out()), &shape)
}

pub(super) fn conv2d_backward(
    gpu: &GpuBackend,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    geo: Conv2dGeometry,
    need_dx: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let d = Dims::of(x, w, geo);
    if [x, w, dy].iter().any(|t| t.numel() == 0) {
        // Both gradients are empty sums (or empty tensors).
        let dx = need_dx.then(|| gpu.zeros(x.shape().clone(), x.dtype())).transpose()?;
        return Ok((dx, gpu.zeros(w.shape().clone(), w.dtype())?));
    }
    if is_depthwise(&d) {
        let dw = depthwise_weight_grad(gpu, &d, x, dy, w)?;
        let dx = if need_dx {
            let dx = gpu.uninit(x.shape().clone(), x.dtype())?;
            let grid = per_sample(&d, d.h * d.w)?;
            launch(gpu, &d, ("dwconv_dx", &[]), Some(grid), dx.numel(), &[dy, w, &dx])?;
            Some(dx)
        } else {
            None
        };
        return Ok((dx, dw));
    }
    if is_pointwise(&d) {
        return pointwise_backward(gpu, &d, (x, w, dy), need_dx);
    }
    let layout = backward_columns(&d);
    let col = im2col(gpu, &d, x, layout)?;
    if layout == Columns::SampleMajor {
        let dw = summed_weight_grad(gpu, &d, &col, dy, w)?;
        let dx = need_dx
            .then(|| col2im(gpu, &d, &per_sample_patch_grad(gpu, &d, w, dy, col.dims())?, layout, x))
            .transpose()?;
        return Ok((dx, dw));
    }
    let dy_cm = channel_major(gpu, &d, dy, d.co)?;
    let dw = channel_major_weight_grad(gpu, &d, &dy_cm, &col, w)?;
    let dx = if need_dx {
        // dcol_g [patch, N*Ho*Wo] = W_g^T @ dY_g, gathered back into the image.
        let dcol = gpu.uninit(col.shape().clone(), x.dtype())?;
        let spec = gemm_spec(x.dtype(), d.groups, (d.patch(), columns(&d), d.cog()), (true, false))?;
        gemm(gpu, spec, w, &dy_cm, &dcol)?;
        Some(col2im(gpu, &d, &dcol, layout, x)?)
    } else {
        None
    };
    Ok((dx, dw))
}
