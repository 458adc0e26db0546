//! Row-wise normalisations over the last dimension: LayerNorm (with the fused residual
//! add), softmax and L2 normalisation.

use std::ops::Range;

use rayon::prelude::*;

use crate::backend::{LayerNormGrads, LayerNormOut, LnAffine};
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// Columns per task in the column reductions: wide enough that each task reads
/// contiguous runs of every row.
const COLUMN_BLOCK: usize = 64;

/// out[j] = sum over `rows` r of f(r, j), column blocks in parallel, rows in a fixed order.
fn column_sums<T: Real>(rows: Range<usize>, d: usize, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); d];
    out.par_chunks_mut(COLUMN_BLOCK).enumerate().for_each(|(c, acc)| {
        let j0 = c * COLUMN_BLOCK;
        for r in rows.clone() {
            for (k, a) in acc.iter_mut().enumerate() {
                *a += f(r, j0 + k);
            }
        }
    });
    out
}

/// The gamma (and beta) slices of each row segment of `affine`, and the first segment's rows.
struct Segments<'a, T> {
    first_rows: usize,
    first: (&'a [T], &'a [T]),
    second: (&'a [T], &'a [T]),
}

impl<'a, T: Real> Segments<'a, T> {
    fn of(affine: &'a LnAffine, rows: usize) -> Result<Self> {
        let (g2, b2) = affine.second_or_first();
        Ok(Segments {
            first_rows: affine.first_rows(rows),
            first: (affine.gamma.cpu_slice::<T>()?, affine.beta.cpu_slice::<T>()?),
            second: (g2.cpu_slice::<T>()?, b2.cpu_slice::<T>()?),
        })
    }

    /// (gamma, beta) of row `r`.
    fn of_row(&self, r: usize) -> (&'a [T], &'a [T]) {
        if r < self.first_rows { self.first } else { self.second }
    }
}

pub fn layer_norm<T: Real>(x: &Tensor, residual: Option<&Tensor>, affine: &LnAffine, eps: f64) -> Result<LayerNormOut> {
    let d = x.shape().last();
    let rows = x.shape().rows();
    let xs = x.cpu_slice::<T>()?;
    let summed: Option<Vec<T>> = match residual {
        Some(r) => Some(xs.iter().zip(r.cpu_slice::<T>()?).map(|(&a, &b)| a + b).collect()),
        None => None,
    };
    let input: &[T] = summed.as_deref().unwrap_or(xs);
    let segments = Segments::<T>::of(affine, rows)?;
    let n = T::of(d as f64);
    let mut y = vec![T::zero(); input.len()];
    let stats: Vec<(T, T)> = y
        .par_chunks_mut(d.max(1))
        .zip(input.par_chunks(d.max(1)))
        .enumerate()
        .map(|(r, (yr, xr))| {
            let (g, b) = segments.of_row(r);
            let mean = xr.iter().copied().sum::<T>() / n;
            let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
            let rstd = T::one() / (var + T::of(eps)).sqrt();
            for j in 0..d {
                yr[j] = (xr[j] - mean) * rstd * g[j] + b[j];
            }
            (mean, rstd)
        })
        .collect();
    let (mean, rstd): (Vec<T>, Vec<T>) = stats.into_iter().unzip();
    let shape = x.shape().clone();
    Ok(LayerNormOut {
        sum: summed.map(|s| Tensor::from_vec(s, shape.clone())).transpose()?,
        y: Tensor::from_vec(y, shape)?,
        mean: Tensor::from_vec(mean, [rows])?,
        rstd: Tensor::from_vec(rstd, [rows])?,
    })
}

pub fn layer_norm_backward<T: Real>(
    input: &Tensor,
    affine: &LnAffine,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<LayerNormGrads> {
    let d = input.shape().last();
    let rows = input.shape().rows();
    let (xs, dys) = (input.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let segments = Segments::<T>::of(affine, rows)?;
    let (mu, rs) = (mean.cpu_slice::<T>()?, rstd.cpu_slice::<T>()?);
    let xhat = |r: usize, j: usize| (xs[r * d + j] - mu[r]) * rs[r];
    let n = T::of(d as f64);

    let mut dx = vec![T::zero(); xs.len()];
    dx.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, dxr)| {
        let g = segments.of_row(r).0;
        // dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy * xhat))
        let mut mean_gdy = T::zero();
        let mut mean_gdy_xhat = T::zero();
        for j in 0..d {
            let gdy = g[j] * dys[r * d + j];
            mean_gdy += gdy;
            mean_gdy_xhat += gdy * xhat(r, j);
        }
        mean_gdy = mean_gdy / n;
        mean_gdy_xhat = mean_gdy_xhat / n;
        for j in 0..d {
            dxr[j] = rs[r] * (g[j] * dys[r * d + j] - mean_gdy - xhat(r, j) * mean_gdy_xhat);
        }
    });
    // d gamma and d beta of the rows of one segment.
    let affine_grads = |rows: Range<usize>| -> Result<(Tensor, Tensor)> {
        let dgamma = column_sums(rows.clone(), d, |r, j| dys[r * d + j] * xhat(r, j));
        let dbeta = column_sums(rows, d, |r, j| dys[r * d + j]);
        Ok((Tensor::from_vec(dgamma, [d])?, Tensor::from_vec(dbeta, [d])?))
    };
    let (dgamma, dbeta) = affine_grads(0..segments.first_rows)?;
    let second = affine.second.as_ref().map(|_| affine_grads(segments.first_rows..rows)).transpose()?;
    Ok(LayerNormGrads { dx: Tensor::from_vec(dx, input.shape().clone())?, dgamma, dbeta, second })
}

/// Softmax of each row. A row that is entirely -inf (fully masked) gives zeros, not NaN.
pub fn softmax<T: Real>(x: &Tensor) -> Result<Tensor> {
    let d = x.shape().last().max(1);
    let xs = x.cpu_slice::<T>()?;
    let mut y = vec![T::zero(); xs.len()];
    y.par_chunks_mut(d).zip(xs.par_chunks(d)).for_each(|(yr, xr)| {
        let max = xr.iter().copied().fold(T::neg_infinity(), T::max);
        if max == T::neg_infinity() {
            return;
        }
        let mut sum = T::zero();
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - max).exp();
            sum += *o;
        }
        yr.iter_mut().for_each(|o| *o = *o / sum);
    });
    Tensor::from_vec(y, x.shape().clone())
}

pub fn softmax_backward<T: Real>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let d = y.shape().last().max(1);
    let (ys, dys) = (y.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let mut dx = vec![T::zero(); ys.len()];
    dx.par_chunks_mut(d).enumerate().for_each(|(r, dxr)| {
        let (yr, dyr) = (&ys[r * d..(r + 1) * d], &dys[r * d..(r + 1) * d]);
        let dot: T = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum();
        for j in 0..d {
            dxr[j] = yr[j] * (dyr[j] - dot);
        }
    });
    Tensor::from_vec(dx, y.shape().clone())
}

/// y = x / max(||x||, eps) per row, as torch.nn.functional.normalize.
pub fn l2_normalize<T: Real>(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let d = x.shape().last().max(1);
    let xs = x.cpu_slice::<T>()?;
    let mut y = vec![T::zero(); xs.len()];
    let norms: Vec<T> = y
        .par_chunks_mut(d)
        .zip(xs.par_chunks(d))
        .map(|(yr, xr)| {
            let norm = xr.iter().map(|&v| v * v).sum::<T>().sqrt();
            let denom = norm.max(T::of(eps));
            yr.iter_mut().zip(xr).for_each(|(o, &v)| *o = v / denom);
            norm
        })
        .collect();
    let rows = x.shape().rows();
    Ok((Tensor::from_vec(y, x.shape().clone())?, Tensor::from_vec(norms, [rows])?))
}

/// Above eps: dx = (dy - y * <dy, y>) / ||x||. Below it the denominator is the constant eps.
pub fn l2_normalize_backward<T: Real>(y: &Tensor, norm: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
    let d = y.shape().last().max(1);
    let (ys, ns, dys) = (y.cpu_slice::<T>()?, norm.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let mut dx = vec![T::zero(); ys.len()];
    dx.par_chunks_mut(d).enumerate().for_each(|(r, dxr)| {
        let (yr, dyr) = (&ys[r * d..(r + 1) * d], &dys[r * d..(r + 1) * d]);
        if ns[r] > T::of(eps) {
            let dot: T = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum();
            for j in 0..d {
                dxr[j] = (dyr[j] - yr[j] * dot) / ns[r];
            }
        } else {
            for j in 0..d {
                dxr[j] = dyr[j] / T::of(eps);
            }
        }
    });
    Tensor::from_vec(dx, y.shape().clone())
}
