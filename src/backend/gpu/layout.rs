//! Rust side of kernels/layout.cu. Pure moves (slice, pad_slice, concat, permute, row gathers)
//! run over access units of 16, 4 or 2 bytes, the widest that divides every width, stride and
//! offset of the launch; only the scatter-add of `index_rows_backward` does arithmetic.

use super::GpuBackend;
use super::context::{device_ptr, int, kernel_for, ptr};
use super::driver::{DevicePtr, KernelArg, LaunchConfig};
use super::elementwise::{copy_as, grid_stride, packs_per_row, vec_flag};
use super::footprint::Footprint;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Table, Tensor};

/// Bytes per element of a dtype the GPU kernels handle; f64 is refused with the op's name.
pub(super) fn element_bytes(op: &'static str, dtype: DType) -> Result<usize> {
    match dtype {
        DType::F32 | DType::BF16 => Ok(dtype.size_in_bytes()),
        DType::F64 => Err(Error::dtype(op, "GPU kernels compute in f32 or bf16, not f64")),
    }
}

/// The widest access unit (16, 4 or 2 bytes) dividing every byte count and address given.
/// Elements are 2 or 4 bytes, so 2 always divides.
pub(super) fn unit_bytes(bytes: &[usize]) -> usize {
    [16, 4].into_iter().find(|&u| bytes.iter().all(|b| b.is_multiple_of(u))).unwrap_or(2)
}

/// Copies `rows` runs of `width` bytes from `src` (runs `src_stride` bytes apart) to `dst`
/// (`dst_stride` apart).
fn copy_block(
    gpu: &GpuBackend,
    src: DevicePtr,
    src_stride: usize,
    dst: DevicePtr,
    dst_stride: usize,
    rows: usize,
    width: usize,
) -> Result<()> {
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let unit = unit_bytes(&[src as usize, dst as usize, src_stride, dst_stride, width]);
    let args = [
        KernelArg::Ptr(src),
        int(src_stride / unit, "source stride")?,
        KernelArg::Ptr(dst),
        int(dst_stride / unit, "destination stride")?,
        int(rows, "rows")?,
        int(width / unit, "width")?,
    ];
    let footprint = Footprint::default().reads(rows * width).writes(rows * width);
    gpu.launch(&format!("copy_block_b{unit}"), grid_stride(rows * (width / unit)), &args, footprint)
}

/// Bytes of one index step along `dim` (the inner block) and the outer count, as every
/// along-one-dimension op views its tensor.
fn around_dim(op: &'static str, shape: &Shape, dtype: DType, dim: usize) -> Result<(usize, usize, usize)> {
    int(shape.numel(), "elements")?;
    let (outer, n, inner) = shape.split_at_dim(dim);
    Ok((outer, n, inner * element_bytes(op, dtype)?))
}

pub(super) fn slice(gpu: &GpuBackend, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let (outer, n, step) = around_dim("slice", x.shape(), x.dtype(), dim)?;
    let mut dims = x.dims().to_vec();
    dims[dim] = len;
    let y = gpu.uninit(dims, x.dtype())?;
    let src = device_ptr(x)? + (start * step) as DevicePtr;
    copy_block(gpu, src, n * step, device_ptr(&y)?, len * step, outer, len * step)?;
    Ok(y)
}

pub(super) fn pad_slice(gpu: &GpuBackend, x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor> {
    let (outer, len, step) = around_dim("pad_slice", x.shape(), x.dtype(), dim)?;
    let mut dims = x.dims().to_vec();
    dims[dim] = full;
    let y = gpu.zeros(dims, x.dtype())?;
    let dst = device_ptr(&y)? + (start * step) as DevicePtr;
    copy_block(gpu, device_ptr(x)?, len * step, dst, full * step, outer, len * step)?;
    Ok(y)
}

/// One block copy per input, each into its column range of the output's rows.
pub(super) fn concat(gpu: &GpuBackend, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = xs.first().ok_or_else(|| Error::invalid("concat", "no tensors to concatenate"))?;
    let mut dims = first.dims().to_vec();
    dims[dim] = xs.iter().map(|t| t.dims()[dim]).sum();
    let y = gpu.uninit(dims, first.dtype())?;
    let (outer, total, step) = around_dim("concat", y.shape(), y.dtype(), dim)?;
    let mut offset = 0;
    for x in xs {
        let len = x.dims()[dim];
        let dst = device_ptr(&y)? + (offset * step) as DevicePtr;
        copy_block(gpu, device_ptr(x)?, len * step, dst, total * step, outer, len * step)?;
        offset += len;
    }
    Ok(y)
}

/// The permute as (output dims, input stride of a step along each), with dims of size 1
/// dropped and consecutive output dims merged where the outer one steps exactly over the inner
/// one in the input: the same element mapping at the smallest rank.
fn collapse(dims: &[usize], perm: &[usize]) -> Vec<(usize, usize)> {
    let mut in_strides = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * dims[d + 1];
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &p in perm.iter().filter(|&&p| dims[p] != 1) {
        let (size, stride) = (dims[p], in_strides[p]);
        match out.last_mut() {
            Some(last) if last.1 == stride * size => *last = (last.0 * size, stride),
            _ => out.push((size, stride)),
        }
    }
    if out.is_empty() {
        out.push((1, 1));
    }
    out
}

/// Merges runs of the innermost dim into wider access units when it is contiguous in the input
/// and every outer stride stays a whole number of units. Returns the unit in bytes.
fn widen_inner(dims: &mut [(usize, usize)], size: usize) -> usize {
    let inner = dims.len() - 1;
    if dims[inner].1 != 1 {
        return size;
    }
    let mut bytes: Vec<usize> = dims[..inner].iter().map(|&(_, stride)| stride * size).collect();
    bytes.push(dims[inner].0 * size);
    let unit = unit_bytes(&bytes).max(size);
    let per_unit = unit / size;
    dims[inner].0 /= per_unit;
    dims[..inner].iter_mut().for_each(|d| d.1 /= per_unit);
    unit
}

/// A tiled transpose when the collapsed permute swaps the two innermost dims of its input;
/// otherwise a gather over the collapsed dims, each output element read from its input offset,
/// the dims and strides travelling as an uploaded table, so any rank works.
pub(super) fn permute(gpu: &GpuBackend, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let size = element_bytes("permute", x.dtype())?;
    int(x.numel(), "elements")?;
    let out_dims: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    let mut dims = collapse(x.dims(), perm);
    if x.numel() == 0 || dims == [(x.numel(), 1)] {
        return copy_as(gpu, x, out_dims.into());
    }
    let y = gpu.uninit(out_dims, x.dtype())?;
    if let Some(planes) = batched_transpose(&dims) {
        return transpose(gpu, x, y, planes);
    }
    let unit = widen_inner(&mut dims, size);
    let table: Vec<i32> = dims.iter().map(|d| d.0 as i32).chain(dims.iter().map(|d| d.1 as i32)).collect();
    let table = gpu.upload(&table)?;
    let n = x.numel() * size / unit;
    let args = [ptr(x)?, ptr(&y)?, int(n, "elements")?, int(dims.len(), "rank")?, KernelArg::Ptr(table.ptr())];
    let footprint = Footprint::of(&[x], &[&y]).reads(table.bytes());
    gpu.launch(&format!("permute_b{unit}"), grid_stride(n), &args, footprint)?;
    Ok(y)
}

/// Side of the tiles of kernels/layout.cu's `transpose` and the rows of threads in its blocks.
const TRANSPOSE_TILE: usize = 32;
const TRANSPOSE_ROWS_PER_PASS: u32 = 8;
/// The largest grid y and z.
const MAX_GRID_YZ: usize = 65_535;

/// (planes, rows, cols) when the collapsed permute swaps the two innermost dims of a
/// [planes, rows, cols] input: output element (p, c, r) reads input (p, r, c). The tiled
/// kernel then applies, when its grid fits.
fn batched_transpose(dims: &[(usize, usize)]) -> Option<(usize, usize, usize)> {
    let (planes, rows, cols) = match *dims {
        [(cols, 1), (rows, row_stride)] if row_stride == cols => (1, rows, cols),
        [(planes, plane_stride), (cols, 1), (rows, row_stride)]
            if row_stride == cols && plane_stride == rows * cols =>
        {
            (planes, rows, cols)
        }
        _ => return None,
    };
    (planes <= MAX_GRID_YZ && rows.div_ceil(TRANSPOSE_TILE) <= MAX_GRID_YZ).then_some((planes, rows, cols))
}

/// `x` as [planes, rows, cols] transposed into `y`, [planes, cols, rows], in 32 x 32 tiles.
fn transpose(gpu: &GpuBackend, x: &Tensor, y: Tensor, (planes, rows, cols): (usize, usize, usize)) -> Result<Tensor> {
    let kernel = format!("transpose_b{}", element_bytes("permute", x.dtype())?);
    let tiles = |n: usize| n.div_ceil(TRANSPOSE_TILE) as u32;
    let config = LaunchConfig {
        grid: [tiles(cols), tiles(rows), planes as u32],
        block: [TRANSPOSE_TILE as u32, TRANSPOSE_ROWS_PER_PASS, 1],
        shared_bytes: 0,
    };
    let args = [ptr(x)?, ptr(&y)?, int(rows, "rows")?, int(cols, "columns")?];
    gpu.launch(&kernel, config, &args, Footprint::of(&[x], &[&y]))?;
    Ok(y)
}

fn check_ids(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= rows) {
        Some(j) => Err(Error::index(op, format!("id {} at position {j} for a table of {rows} rows", ids[j]))),
        None => Ok(()),
    }
}

pub(super) fn index_rows(gpu: &GpuBackend, table: &Tensor, id_table: &Table) -> Result<Tensor> {
    let size = element_bytes("index_rows", table.dtype())?;
    let (rows, d) = (table.dims()[0], table.dims()[1]);
    let ids = &id_table.words()[..];
    check_ids("index_rows", ids, rows)?;
    let y = gpu.uninit([ids.len(), d], table.dtype())?;
    int(y.numel(), "elements")?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let unit = unit_bytes(&[d * size]);
    let width = d * size / unit;
    let ids_on_device = id_table.device_ptr(gpu.device())?;
    let args = [ptr(table)?, KernelArg::Ptr(ids_on_device), ptr(&y)?, int(ids.len(), "ids")?, int(width, "width")?];
    // Each table row that an id names is read once, however many ids name it.
    let distinct_rows = ids.iter().collect::<std::collections::BTreeSet<_>>().len();
    let footprint = Footprint::of(&[], &[&y]).reads(distinct_rows * d * size + id_table.bytes());
    gpu.launch(&format!("gather_rows_b{unit}"), grid_stride(ids.len() * width), &args, footprint)?;
    Ok(y)
}

/// For each table row, the positions j with ids[j] == row in increasing j, as CSR: the
/// positions of row r are `positions[starts[r]..starts[r + 1]]`, returned as `starts` (rows + 1
/// words) then `positions` (one per id). A counting sort, so stable. Ids are checked first.
fn positions_by_row(ids: &[u32], rows: usize) -> Vec<u32> {
    let mut plan = vec![0u32; rows + 1 + ids.len()];
    let (starts, positions) = plan.split_at_mut(rows + 1);
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for r in 0..rows {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.to_vec();
    for (j, &id) in ids.iter().enumerate() {
        positions[next[id as usize] as usize] = j as u32;
        next[id as usize] += 1;
    }
    plan
}

/// Deterministic without atomics: each output row sums the dy rows that refer to it in
/// increasing position, from a CSR index built here.
pub(super) fn index_rows_backward(gpu: &GpuBackend, dy: &Tensor, id_table: &Table, rows: usize) -> Result<Tensor> {
    let kernel = kernel_for("index_rows_backward", dy.dtype())?;
    let ids = &id_table.words()[..];
    check_ids("index_rows_backward", ids, rows)?;
    let d = dy.dims()[1];
    int(rows * d, "elements")?;
    int(dy.numel(), "elements")?;
    if ids.is_empty() || rows * d == 0 {
        return gpu.zeros([rows, d], dy.dtype());
    }
    let out = gpu.uninit([rows, d], dy.dtype())?;
    // Made once per ids table and row count, and kept in step with the ids when they are
    // rewritten (the ids of a captured graph's next step).
    let plan = id_table.derived(&format!("positions by row of {rows}"), move |ids| positions_by_row(ids, rows));
    let starts = plan.device_ptr(gpu.device())?;
    let positions = starts + 4 * (rows as u64 + 1);
    let packs = packs_per_row(d, dy.dtype());
    let args = [
        ptr(dy)?,
        KernelArg::Ptr(starts),
        KernelArg::Ptr(positions),
        ptr(&out)?,
        int(rows, "rows")?,
        int(d, "width")?,
        vec_flag(d, dy.dtype()),
    ];
    let footprint = Footprint::of(&[dy], &[&out]).reads(plan.bytes());
    gpu.launch(&kernel, grid_stride(rows * packs), &args, footprint)?;
    Ok(out)
}
