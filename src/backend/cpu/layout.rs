//! Data movement: reductions along a dimension, permutes, concat/slice, row gathers.
//! Every op views its tensor as [outer, n, inner] around the dimension it works on.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{Real, Shape, Tensor};

/// Columns handled by one task in column-parallel reductions.
const COLUMN_BLOCK: usize = 64;

/// out[o, j] = sum_i x[o, i, j], summed in increasing i (deterministic).
pub fn sum_middle<T: Real>(x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let mut out = vec![T::zero(); outer * inner];
    for (o, dst) in out.chunks_mut(inner.max(1)).enumerate().take(outer) {
        let block = &xs[o * n * inner..(o + 1) * n * inner];
        dst.par_chunks_mut(COLUMN_BLOCK).enumerate().for_each(|(c, cols)| {
            let j0 = c * COLUMN_BLOCK;
            for i in 0..n {
                let row = &block[i * inner + j0..i * inner + j0 + cols.len()];
                cols.iter_mut().zip(row).for_each(|(acc, &v)| *acc += v);
            }
        });
    }
    Tensor::from_vec(out, [outer, inner])
}

pub fn repeat_middle<T: Real>(x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let mut out = Vec::with_capacity(outer * n * inner);
    for o in 0..outer {
        for _ in 0..n {
            out.extend_from_slice(&xs[o * inner..(o + 1) * inner]);
        }
    }
    Tensor::from_vec(out, [outer, n, inner])
}

pub fn permute<T: Real>(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let dims = x.dims();
    let rank = dims.len();
    let mut in_strides = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * dims[d + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    // Stride in the input of a unit step along each output dimension.
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let last = out_dims.last().copied().unwrap_or(1).max(1);
    let mut out = vec![T::zero(); xs.len()];
    out.par_chunks_mut(last).enumerate().for_each(|(row, dst)| {
        // Decompose the row index over the output's leading dimensions.
        let mut base = 0;
        let mut rem = row;
        for d in (0..rank.saturating_sub(1)).rev() {
            base += (rem % out_dims[d]) * strides[d];
            rem /= out_dims[d];
        }
        let step = if rank == 0 { 0 } else { strides[rank - 1] };
        dst.iter_mut().enumerate().for_each(|(j, o)| *o = xs[base + j * step]);
    });
    Tensor::from_vec(out, out_dims)
}

pub fn concat<T: Real>(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let mut out_dims = xs[0].dims().to_vec();
    out_dims[dim] = xs.iter().map(|t| t.dims()[dim]).sum();
    let (outer, _, inner) = Shape::new(out_dims.clone()).split_at_dim(dim);
    let slices: Vec<&[T]> = xs.iter().map(|t| t.cpu_slice::<T>()).collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(out_dims.iter().product());
    for o in 0..outer {
        for (t, s) in xs.iter().zip(&slices) {
            let block = t.dims()[dim] * inner;
            out.extend_from_slice(&s[o * block..(o + 1) * block]);
        }
    }
    Tensor::from_vec(out, out_dims)
}

pub fn slice<T: Real>(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let (outer, n, inner) = x.shape().split_at_dim(dim);
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * n + start) * inner;
        out.extend_from_slice(&xs[base..base + len * inner]);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = len;
    Tensor::from_vec(out, dims)
}

pub fn pad_slice<T: Real>(x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let (outer, len, inner) = x.shape().split_at_dim(dim);
    let mut out = vec![T::zero(); outer * full * inner];
    for o in 0..outer {
        let dst = (o * full + start) * inner;
        out[dst..dst + len * inner].copy_from_slice(&xs[o * len * inner..(o + 1) * len * inner]);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = full;
    Tensor::from_vec(out, dims)
}

fn check_ids(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= rows) {
        Some(j) => Err(Error::index(op, format!("id {} at position {j} for a table of {rows} rows", ids[j]))),
        None => Ok(()),
    }
}

pub fn index_rows<T: Real>(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (rows, d) = (table.dims()[0], table.dims()[1]);
    check_ids("index_rows", ids, rows)?;
    let ts = table.cpu_slice::<T>()?;
    let mut out = vec![T::zero(); ids.len() * d];
    out.par_chunks_mut(d.max(1)).zip(ids.par_iter()).for_each(|(dst, &id)| {
        let id = id as usize;
        dst.copy_from_slice(&ts[id * d..(id + 1) * d]);
    });
    Tensor::from_vec(out, [ids.len(), d])
}

/// Scatter-add of gradient rows. Threads split the columns, and each adds the rows in id
/// order, so repeated ids accumulate in a fixed order.
pub fn index_rows_backward<T: Real>(dy: &Tensor, ids: &[u32], rows: usize) -> Result<Tensor> {
    check_ids("index_rows_backward", ids, rows)?;
    let d = dy.dims()[1];
    let dys = dy.cpu_slice::<T>()?;
    let mut out = vec![T::zero(); rows * d];
    let blocks = d.div_ceil(COLUMN_BLOCK);
    let columns: Vec<Vec<T>> = (0..blocks)
        .into_par_iter()
        .map(|c| {
            let (j0, j1) = (c * COLUMN_BLOCK, ((c + 1) * COLUMN_BLOCK).min(d));
            let w = j1 - j0;
            let mut acc = vec![T::zero(); rows * w];
            for (j, &id) in ids.iter().enumerate() {
                let src = &dys[j * d + j0..j * d + j1];
                let dst = &mut acc[id as usize * w..(id as usize + 1) * w];
                dst.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            }
            acc
        })
        .collect();
    for (c, acc) in columns.iter().enumerate() {
        let (j0, w) = (c * COLUMN_BLOCK, acc.len() / rows.max(1));
        for r in 0..rows {
            out[r * d + j0..r * d + j0 + w].copy_from_slice(&acc[r * w..(r + 1) * w]);
        }
    }
    Tensor::from_vec(out, [rows, d])
}
