//! Losses: InfoNCE with weighted directions (CLIP's symmetric contrastive loss, OneR's
//! one-directional contrasts) and cross-entropy.
//!
//! The reference materialises the n x n logits; the fused GPU kernel never will, and this is
//! what it is checked against.

use rayon::prelude::*;

use crate::backend::{ContrastWeights, InfoNceOut, InfoNcePartial, InfoNceShard};
use crate::error::Result;
use crate::ops::IGNORE_TARGET;
use crate::tensor::{Real, Table, Tensor};

fn logsumexp<T: Real>(values: impl Iterator<Item = T> + Clone) -> T {
    let max = values.clone().fold(T::neg_infinity(), T::max);
    if max == T::neg_infinity() {
        return max;
    }
    max + values.map(|v| (v - max).exp()).sum::<T>().ln()
}

/// The temperature multiplier and whether the clamp is active (then the scale gets no gradient).
fn temperature<T: Real>(logit_scale: &Tensor, max_scale: Option<f64>) -> Result<(T, bool)> {
    let t = logit_scale.cpu_slice::<T>()?[0].exp();
    Ok(match max_scale {
        Some(m) if t > T::of(m) => (T::of(m), true),
        _ => (t, false),
    })
}

/// logits[i, j] = t * <img_i, txt_j>, row-major [rows, cols].
fn logits<T: Real>(img: &[T], txt: &[T], rows: usize, cols: usize, d: usize, t: T) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    out.par_chunks_mut(cols.max(1)).enumerate().for_each(|(i, row)| {
        let a = &img[i * d..(i + 1) * d];
        for (j, o) in row.iter_mut().enumerate() {
            *o = t * a.iter().zip(&txt[j * d..(j + 1) * d]).map(|(&x, &y)| x * y).sum::<T>();
        }
    });
    out
}

/// The weights of the two directions and of the positive logits' `-2 z_ii` terms, over n pairs.
fn direction_factors<T: Real>(weights: ContrastWeights) -> (T, T, T) {
    (T::of(weights.rows), T::of(weights.columns), T::of(weights.positives()))
}

pub fn infonce<T: Real>(pairs: InfoNceShard<'_>) -> Result<InfoNceOut> {
    let (n, _, d) = pairs.dims();
    let (t, _) = temperature::<T>(pairs.logit_scale, pairs.max_scale)?;
    let z = logits(pairs.img.cpu_slice::<T>()?, pairs.txt.cpu_slice::<T>()?, n, n, d, t);
    let row_lse: Vec<T> = (0..n).into_par_iter().map(|i| logsumexp(z[i * n..(i + 1) * n].iter().copied())).collect();
    let col_lse: Vec<T> = (0..n).into_par_iter().map(|j| logsumexp((0..n).map(|i| z[i * n + j]))).collect();
    let (w_rows, w_cols, w_positive) = direction_factors::<T>(pairs.weights);
    let mut total = T::zero();
    for i in 0..n {
        // Written so that the symmetric weights (1/2) round exactly as (r + c - 2 z) / 2 would.
        total += w_rows * row_lse[i] + w_cols * col_lse[i] - T::of(2.0) * w_positive * z[i * n + i];
    }
    let loss = total / T::of(n as f64);
    Ok(InfoNceOut {
        loss: Tensor::from_vec(vec![loss], [1])?,
        row_lse: Tensor::from_vec(row_lse, [n])?,
        col_lse: Tensor::from_vec(col_lse, [n])?,
    })
}

/// A data-parallel rank's rows of the logits: complete row and partial column log-sum-exps
/// (`Backend::infonce_partial`).
pub fn infonce_partial<T: Real>(shard: InfoNceShard<'_>) -> Result<InfoNcePartial> {
    let ((n_local, n, d), offset) = (shard.dims(), shard.offset);
    let (t, _) = temperature::<T>(shard.logit_scale, shard.max_scale)?;
    let z = logits(shard.img.cpu_slice::<T>()?, shard.txt.cpu_slice::<T>()?, n_local, n, d, t);
    let row_lse: Vec<T> =
        (0..n_local).into_par_iter().map(|i| logsumexp(z[i * n..(i + 1) * n].iter().copied())).collect();
    let col_lse: Vec<T> = (0..n).into_par_iter().map(|j| logsumexp((0..n_local).map(|i| z[i * n + j]))).collect();
    let positive_terms: T = (0..n_local).map(|i| T::of(-2.0) * z[i * n + offset + i]).sum();
    Ok(InfoNcePartial {
        row_lse: Tensor::from_vec(row_lse, [n_local])?,
        col_lse: Tensor::from_vec(col_lse, [n])?,
        positive_terms: Tensor::from_vec(vec![positive_terms], [1])?,
        offset,
        weights: shard.weights,
        dtype: shard.img.dtype(),
    })
}

/// Combines the ranks' partial column log-sum-exps ([ranks, n]) and forms the rank's share of
/// the loss (`Backend::infonce_finish`).
pub fn infonce_finish<T: Real>(partial: &InfoNcePartial, col_partials: &Tensor) -> Result<InfoNceOut> {
    let (ranks, n) = (col_partials.dims()[0], col_partials.dims()[1]);
    let parts = col_partials.cpu_slice::<T>()?;
    let col_lse: Vec<T> = (0..n).map(|j| logsumexp((0..ranks).map(|r| parts[r * n + j]))).collect();
    let own_columns = partial.offset..partial.offset + partial.row_lse.numel();
    let rows: T = partial.row_lse.cpu_slice::<T>()?.iter().copied().sum();
    let columns: T = col_lse[own_columns].iter().copied().sum();
    let positives: T = partial.positive_terms.cpu_slice::<T>()?.iter().copied().sum();
    let (w_rows, w_cols, w_positive) = direction_factors::<T>(partial.weights);
    let loss = (w_rows * rows + w_cols * columns + w_positive * positives) / T::of(n as f64);
    Ok(InfoNceOut {
        loss: Tensor::from_vec(vec![loss], [1])?,
        row_lse: partial.row_lse.clone(),
        col_lse: Tensor::from_vec(col_lse, [n])?,
    })
}

/// The gradient of the global loss through a rank's rows of the logits (the whole batch for
/// `InfoNceShard::whole`): d img of those rows, and the rows' parts of d txt and d logit_scale.
pub fn infonce_backward<T: Real>(
    shard: InfoNceShard<'_>,
    out: &InfoNceOut,
    dloss: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let ((n_local, n, d), offset) = (shard.dims(), shard.offset);
    let (is, ts) = (shard.img.cpu_slice::<T>()?, shard.txt.cpu_slice::<T>()?);
    let (t, clamped) = temperature::<T>(shard.logit_scale, shard.max_scale)?;
    let (rl, cl) = (out.row_lse.cpu_slice::<T>()?, out.col_lse.cpu_slice::<T>()?);
    let g = dloss.cpu_slice::<T>()?[0] / T::of(n as f64);
    let z = logits(is, ts, n_local, n, d, t);
    let (w_rows, w_cols, w_positive) = direction_factors::<T>(shard.weights);

    // dz[i, j] = g (w_rows softmax_row[i, j] + w_cols softmax_col[i, j] - 2 w_positive [offset + i == j])
    let mut dz = vec![T::zero(); n_local * n];
    dz.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        for (j, o) in row.iter_mut().enumerate() {
            let zij = z[i * n + j];
            let diag = if offset + i == j { T::of(2.0) * w_positive } else { T::zero() };
            *o = g * (w_rows * (zij - rl[i]).exp() + w_cols * (zij - cl[j]).exp() - diag);
        }
    });
    // z = t * I T^T: dI = t dz T, dT = t dz^T I, dt = <dz, z> / t.
    let mut dimg = vec![T::zero(); n_local * d];
    dimg.par_chunks_mut(d.max(1)).enumerate().for_each(|(i, row)| {
        for j in 0..n {
            let w = t * dz[i * n + j];
            row.iter_mut().zip(&ts[j * d..(j + 1) * d]).for_each(|(o, &v)| *o += w * v);
        }
    });
    let mut dtxt = vec![T::zero(); n * d];
    dtxt.par_chunks_mut(d.max(1)).enumerate().for_each(|(j, row)| {
        for i in 0..n_local {
            let w = t * dz[i * n + j];
            row.iter_mut().zip(&is[i * d..(i + 1) * d]).for_each(|(o, &v)| *o += w * v);
        }
    });
    // d logit_scale = dt * dt/ds = (<dz, z> / t) * t, zero while the clamp holds t fixed.
    let dscale = if clamped { T::zero() } else { dz.iter().zip(&z).map(|(&a, &b)| a * b).sum() };
    Ok((Tensor::from_vec(dimg, [n_local, d])?, Tensor::from_vec(dtxt, [n, d])?, Tensor::from_vec(vec![dscale], [1])?))
}

/// The rows whose target counts (not [`IGNORE_TARGET`]), at least 1: the mean's divisor.
fn counted_rows(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_TARGET).count().max(1)
}

pub fn cross_entropy<T: Real>(logits: &Tensor, targets: &Table) -> Result<(Tensor, Tensor)> {
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    let (zs, targets) = (logits.cpu_slice::<T>()?, targets.words());
    let lse: Vec<T> = (0..n).into_par_iter().map(|i| logsumexp(zs[i * c..(i + 1) * c].iter().copied())).collect();
    let mut total = T::zero();
    for (i, &target) in targets.iter().enumerate().filter(|(_, t)| **t != IGNORE_TARGET) {
        total += lse[i] - zs[i * c + target as usize];
    }
    let mean = total / T::of(counted_rows(&targets) as f64);
    Ok((Tensor::from_vec(vec![mean], [1])?, Tensor::from_vec(lse, [n])?))
}

pub fn cross_entropy_backward<T: Real>(
    logits: &Tensor,
    lse: &Tensor,
    targets: &Table,
    dloss: &Tensor,
) -> Result<Tensor> {
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    let (zs, ls, targets) = (logits.cpu_slice::<T>()?, lse.cpu_slice::<T>()?, targets.words());
    let g = dloss.cpu_slice::<T>()?[0] / T::of(counted_rows(&targets) as f64);
    let mut dz = vec![T::zero(); n * c];
    dz.par_chunks_mut(c.max(1)).enumerate().filter(|(i, _)| targets[*i] != IGNORE_TARGET).for_each(|(i, row)| {
        for (j, o) in row.iter_mut().enumerate() {
            let onehot = if j == targets[i] as usize { T::one() } else { T::zero() };
            *o = g * ((zs[i * c + j] - ls[i]).exp() - onehot);
        }
    });
    Tensor::from_vec(dz, [n, c])
}
