//! Rust side of kernels/elementwise.cu: casts, element maps, the fused bias + activation,
//! deterministic sums over a middle dimension, and the row-wise softmax and L2 normalisation.

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{blocks_for, device_ptr, int, kernel_for, ptr};
use super::driver::{DevicePtr, KernelArg, LaunchConfig};
use super::footprint::Footprint;
use super::layout::{element_bytes, unit_bytes};
use crate::backend::{Activation, BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// Threads per block of every launch in the memory-bound families (8 warps).
const THREADS: u32 = 256;
/// Bound on grid-stride grids: 4096 blocks of 256 threads keep an H100 (132 SMs x 2048
/// threads) busy several times over; larger inputs loop inside the kernel.
const MAX_BLOCKS: u32 = 4096;

/// A grid-stride launch over `items` work items.
pub(super) fn grid_stride(items: usize) -> LaunchConfig {
    LaunchConfig::linear(blocks_for(items, THREADS).min(MAX_BLOCKS), THREADS, 0)
}

/// A launch with one warp per row.
pub(super) fn warp_per_row(rows: usize) -> LaunchConfig {
    grid_stride(rows * 32)
}

/// Elements of `dtype` in one 128-bit access.
pub(super) fn pack_width(dtype: DType) -> usize {
    16 / dtype.size_in_bytes()
}

/// Whether rows of `width` elements can be read in 128-bit packs (every row then starts
/// 16-byte aligned), as the kernels' `vec` flag.
pub(super) fn vec_flag(width: usize, dtype: DType) -> KernelArg {
    KernelArg::I32(width.is_multiple_of(pack_width(dtype)) as i32)
}

/// `x` as [rows, d] around its last dimension, with the element count checked against the
/// kernels' 32-bit indices.
pub(super) fn rows_of(x: &Tensor) -> Result<(usize, usize)> {
    int(x.numel(), "elements")?;
    let d = x.shape().last().max(1);
    Ok((x.numel() / d, d))
}

pub(super) fn cast(gpu: &GpuBackend, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let kernel = match (x.dtype(), dtype) {
        (DType::F32, DType::BF16) => "cast_f32_to_bf16",
        (DType::BF16, DType::F32) => "cast_bf16_to_f32",
        (from, to) if from == to && from != DType::F64 => return copy_as(gpu, x, x.shape().clone()),
        (from, to) => {
            return Err(Error::dtype("cast", format!("GPU tensors are f32 or bf16: cannot cast {from} to {to}")));
        }
    };
    let y = gpu.uninit(x.shape().clone(), dtype)?;
    let args = [ptr(x)?, ptr(&y)?, int(x.numel(), "elements")?];
    map_launch(gpu, kernel, x, &args, Footprint::of(&[x], &[&y]))?;
    Ok(y)
}

/// A copy of `x`'s elements under `shape` (of the same size).
pub(super) fn copy_as(gpu: &GpuBackend, x: &Tensor, shape: Shape) -> Result<Tensor> {
    let y = gpu.uninit(shape, x.dtype())?;
    gpu.driver()?.copy(device_ptr(&y)?, device_ptr(x)?, x.numel() * x.dtype().size_in_bytes())?;
    Ok(y)
}

/// Launches an element map over `x`'s elements (one thread per 128-bit pack); nothing for an
/// empty tensor.
fn map_launch(gpu: &GpuBackend, kernel: &str, x: &Tensor, args: &[KernelArg], footprint: Footprint) -> Result<()> {
    if x.numel() == 0 {
        return Ok(());
    }
    gpu.launch(kernel, grid_stride(x.numel().div_ceil(pack_width(x.dtype()))), args, footprint)
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
    }
}

/// The kernels' op code and constant of a unary op.
fn unary_code(op: UnaryOp) -> (i32, f32) {
    match op {
        UnaryOp::Exp => (0, 0.0),
        UnaryOp::Ln => (1, 0.0),
        UnaryOp::Relu => (2, 0.0),
        UnaryOp::QuickGelu => (3, 0.0),
        UnaryOp::Scale(c) => (4, c as f32),
        UnaryOp::Gelu => (5, 0.0),
    }
}

/// `f(a, b)` with b repeated over a's leading dims: `binary` and the bias + activation forward.
fn periodic(gpu: &GpuBackend, base: &str, a: &Tensor, b: &Tensor, extra: &[KernelArg]) -> Result<Tensor> {
    let kernel = kernel_for(base, a.dtype())?;
    let y = gpu.uninit(a.shape().clone(), a.dtype())?;
    let n = int(a.numel(), "elements")?;
    let args = [ptr(a)?, ptr(b)?, ptr(&y)?, n, int(b.numel(), "period")?];
    map_launch(gpu, &kernel, a, &[&args, extra].concat(), Footprint::of(&[a, b], &[&y]))?;
    Ok(y)
}

pub(super) fn binary(gpu: &GpuBackend, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    periodic(gpu, "binary", a, b, &[KernelArg::I32(binary_code(op))])
}

pub(super) fn unary(gpu: &GpuBackend, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let kernel = kernel_for("unary", x.dtype())?;
    let (code, c) = unary_code(op);
    let y = gpu.uninit(x.shape().clone(), x.dtype())?;
    let args = [ptr(x)?, ptr(&y)?, int(x.numel(), "elements")?, KernelArg::I32(code), KernelArg::F32(c)];
    map_launch(gpu, &kernel, x, &args, Footprint::of(&[x], &[&y]))?;
    Ok(y)
}

pub(super) fn unary_backward(gpu: &GpuBackend, op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let kernel = kernel_for("unary_backward", x.dtype())?;
    let (code, c) = unary_code(op);
    let dx = gpu.uninit(x.shape().clone(), x.dtype())?;
    let n = int(x.numel(), "elements")?;
    let args = [ptr(x)?, ptr(y)?, ptr(dy)?, ptr(&dx)?, n, KernelArg::I32(code), KernelArg::F32(c)];
    map_launch(gpu, &kernel, x, &args, Footprint::of(&[x, y, dy], &[&dx]))?;
    Ok(dx)
}

/// `act(x + bias)`: the kernels `bias_quick_gelu_*` and `bias_gelu_*`.
pub(super) fn bias_activation(gpu: &GpuBackend, x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    periodic(gpu, act.bias_op(), x, bias, &[])
}

/// One launch computes dx and fp32 partial column sums of dx per row chunk; `column_sums`
/// reduces the partials to d bias in a fixed order.
pub(super) fn bias_activation_backward(
    gpu: &GpuBackend,
    x: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
    act: Activation,
) -> Result<(Tensor, Tensor)> {
    let kernel = kernel_for(act.bias_op_backward(), x.dtype())?;
    let (rows, width) = rows_of(x)?;
    let dx = gpu.uninit(x.shape().clone(), x.dtype())?;
    if x.numel() == 0 {
        return Ok((dx, gpu.zeros(bias.shape().clone(), bias.dtype())?));
    }
    let dbias = gpu.uninit(bias.shape().clone(), bias.dtype())?;
    let packs = packs_per_row(width, x.dtype());
    let rows_per_chunk = rows_per_chunk(packs, rows);
    let chunks = rows.div_ceil(rows_per_chunk);
    let partial = Scratch::uninit(gpu.device(), chunks * width * 4)?;
    let args = [
        ptr(x)?,
        ptr(bias)?,
        ptr(dy)?,
        ptr(&dx)?,
        KernelArg::Ptr(partial.ptr()),
        int(rows, "rows")?,
        int(width, "width")?,
        int(rows_per_chunk, "rows per chunk")?,
        vec_flag(width, x.dtype()),
    ];
    let footprint = Footprint::of(&[x, bias, dy], &[&dx]).writes(partial.bytes());
    gpu.launch(&kernel, grid_stride(chunks * packs), &args, footprint)?;
    column_sums(gpu, (partial.ptr(), DType::F32), [1, chunks, width], &dbias)?;
    Ok((dx, dbias))
}

/// Threads per row of `width` elements in the column kernels: one per 128-bit pack when the
/// width allows, else one per element.
pub(super) fn packs_per_row(width: usize, dtype: DType) -> usize {
    if width.is_multiple_of(pack_width(dtype)) { width / pack_width(dtype) } else { width }
}

/// Rows one thread sums in a pass of the column sums: enough chunks to give the device about
/// 2^16 independent sums, each over at least 32 rows. Depends on the shape only, so the order
/// of the additions, and the result, are the same on every run.
fn rows_per_chunk(columns: usize, n: usize) -> usize {
    const TARGET_SUMS: usize = 1 << 16;
    const MIN_ROWS: usize = 32;
    let chunks = TARGET_SUMS.div_ceil(columns.max(1)).min(n.div_ceil(MIN_ROWS)).max(1);
    n.div_ceil(chunks)
}

/// `out[o, j] = sum_i src[o, i, j]` over `[outer, n, inner]` elements of `src` (an address and
/// its element type), into the [outer, inner] tensor `out`. Each pass sums row chunks in a
/// fixed order into fp32 partials until one chunk is left, which is rounded once into `out`.
pub(super) fn column_sums(
    gpu: &GpuBackend,
    src: (DevicePtr, DType),
    [outer, n, inner]: [usize; 3],
    out: &Tensor,
) -> Result<()> {
    let (mut src, mut n) = (src, n);
    // Keeps the previous pass's partials alive until the next pass has been launched.
    let mut _partials: Option<Scratch> = None;
    loop {
        let packs = packs_per_row(inner, src.1);
        let rows_per_chunk = rows_per_chunk(outer * packs, n);
        let chunks = n.div_ceil(rows_per_chunk);
        let next = if chunks == 1 { None } else { Some(Scratch::uninit(gpu.device(), outer * chunks * inner * 4)?) };
        let dst = match &next {
            Some(s) => (s.ptr(), DType::F32),
            None => (device_ptr(out)?, out.dtype()),
        };
        let args = [
            KernelArg::Ptr(src.0),
            KernelArg::Ptr(dst.0),
            int(outer, "outer")?,
            int(n, "rows")?,
            int(inner, "inner")?,
            int(rows_per_chunk, "rows per chunk")?,
            vec_flag(inner, src.1),
        ];
        let footprint = Footprint::default()
            .reads(outer * n * inner * src.1.size_in_bytes())
            .writes(outer * chunks * inner * dst.1.size_in_bytes());
        gpu.launch(&sum_kernel(src.1, dst.1)?, grid_stride(outer * chunks * packs), &args, footprint)?;
        if next.is_none() {
            return Ok(());
        }
        (src, n, _partials) = (dst, chunks, next);
    }
}

/// The column-sum kernel reading `from` and writing `to`; fp32 partials sit between passes.
fn sum_kernel(from: DType, to: DType) -> Result<String> {
    match (from, to) {
        (DType::BF16, DType::F32) => Ok("sum_middle_bf16_to_f32".into()),
        (DType::F32, DType::BF16) => Ok("sum_middle_f32_to_bf16".into()),
        (from, _) => kernel_for("sum_middle", from),
    }
}

pub(super) fn sum_middle(gpu: &GpuBackend, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    element_bytes("sum_middle", x.dtype())?;
    int(x.numel(), "elements")?;
    if n == 0 || outer * inner == 0 {
        return gpu.zeros([outer, inner], x.dtype());
    }
    let out = gpu.uninit([outer, inner], x.dtype())?;
    column_sums(gpu, (device_ptr(x)?, x.dtype()), [outer, n, inner], &out)?;
    Ok(out)
}

/// A pure move: the row of `inner` elements is copied n times in the widest access unit that
/// divides its byte length.
pub(super) fn repeat_middle(gpu: &GpuBackend, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    let size = element_bytes("repeat_middle", x.dtype())?;
    let y = gpu.uninit([outer, n, inner], x.dtype())?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let unit = unit_bytes(&[inner * size]);
    let width = inner * size / unit;
    let args = [ptr(x)?, ptr(&y)?, int(n, "repeats")?, int(outer * n, "rows")?, int(width, "width")?];
    let footprint = Footprint::of(&[x], &[&y]);
    gpu.launch(&format!("repeat_middle_b{unit}"), grid_stride(outer * n * width), &args, footprint)?;
    Ok(y)
}

/// A row-wise kernel over the last dimension of `x`, reading `inputs` and writing `outputs`:
/// `args` come before (rows, d, vec), then `extra`.
fn row_launch(
    gpu: &GpuBackend,
    base: &str,
    x: &Tensor,
    [args, extra]: [&[KernelArg]; 2],
    [inputs, outputs]: [&[&Tensor]; 2],
) -> Result<()> {
    let kernel = kernel_for(base, x.dtype())?;
    let (rows, d) = rows_of(x)?;
    if x.numel() == 0 {
        return Ok(());
    }
    let shape_args = [int(rows, "rows")?, int(d, "row width")?, vec_flag(d, x.dtype())];
    let footprint = Footprint::of(inputs, outputs);
    gpu.launch(&kernel, warp_per_row(rows), &[args, &shape_args, extra].concat(), footprint)
}

pub(super) fn softmax(gpu: &GpuBackend, x: &Tensor) -> Result<Tensor> {
    let y = gpu.uninit(x.shape().clone(), x.dtype())?;
    row_launch(gpu, "softmax", x, [&[ptr(x)?, ptr(&y)?], &[]], [&[x], &[&y]])?;
    Ok(y)
}

pub(super) fn softmax_backward(gpu: &GpuBackend, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dx = gpu.uninit(y.shape().clone(), y.dtype())?;
    row_launch(gpu, "softmax_backward", y, [&[ptr(y)?, ptr(dy)?, ptr(&dx)?], &[]], [&[y, dy], &[&dx]])?;
    Ok(dx)
}

/// The norms are fp32 whatever x's dtype: they are statistics, saved for backward.
pub(super) fn l2_normalize(gpu: &GpuBackend, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (rows, _) = rows_of(x)?;
    let y = gpu.uninit(x.shape().clone(), x.dtype())?;
    let norms = gpu.uninit([rows], DType::F32)?;
    let args = [ptr(x)?, ptr(&y)?, ptr(&norms)?];
    row_launch(gpu, "l2_normalize", x, [&args, &[KernelArg::F32(eps as f32)]], [&[x], &[&y, &norms]])?;
    Ok((y, norms))
}

pub(super) fn l2_normalize_backward(
    gpu: &GpuBackend,
    y: &Tensor,
    norm: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let norm = to_f32(gpu, norm)?;
    let dx = gpu.uninit(y.shape().clone(), y.dtype())?;
    let args = [ptr(y)?, ptr(&norm)?, ptr(dy)?, ptr(&dx)?];
    let tensors: [&[&Tensor]; 2] = [&[y, &norm, dy], &[&dx]];
    row_launch(gpu, "l2_normalize_backward", y, [&args, &[KernelArg::F32(eps as f32)]], tensors)?;
    Ok(dx)
}

/// `t` in f32 (itself when it already is): saved statistics that the kernels read as fp32.
pub(super) fn to_f32(gpu: &GpuBackend, t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 { Ok(t.clone()) } else { cast(gpu, t, DType::F32) }
}
