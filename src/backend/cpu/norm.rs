//! Row-wise normalisations over the last dimension: LayerNorm (with the fused residual
//! add), softmax and L2 normalisation.

use rayon::prelude::*;

use crate::backend::LayerNormOut;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// Columns per task in the column reductions: wide enough that each task reads
/// contiguous runs of every row.
const COLUMN_BLOCK: usize = 64;

/// out[j] = sum over rows r of f(r, j), column blocks in parallel, rows in a fixed order.
fn column_sums<T: Real>(rows: usize, d: usize, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); d];
    out.par_chunks_mut(COLUMN_BLOCK).enumerate().for_each(|(c, acc)| {
        let j0 = c * COLUMN_BLOCK;
        for r in 0..rows {
            for (k, a) in acc.iter_mut().enumerate() {
                *a += f(r, j0 + k);
            }
        }
    });
    out
}

pub fn layer_norm<T: Real>(
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<LayerNormOut> {
    let d = x.shape().last();
    let rows = x.shape().rows();
    let xs = x.cpu_slice::<T>()?;
    let summed: Option<Vec<T>> = match residual {
        Some(r) => Some(xs.iter().zip(r.cpu_slice::<T>()?).map(|(&a, &b)| a + b).collect()),
        None => None,
    };
    let input: &[T] = summed.as_deref().unwrap_or(xs);
    let (g, b) = (gamma.cpu_slice::<T>()?, beta.cpu_slice::<T>()?);
    let n = T::of(d as f64);
    let mut y = vec![T::zero(); input.len()];
    let stats: Vec<(T, T)> = y
        .par_chunks_mut(d.max(1))
        .zip(input.par_chunks(d.max(1)))
        .map(|(yr, xr)| {
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
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = input.shape().last();
    let rows = input.shape().rows();
    let (xs, g, dys) = (input.cpu_slice::<T>()?, gamma.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let (mu, rs) = (mean.cpu_slice::<T>()?, rstd.cpu_slice::<T>()?);
    let xhat = |r: usize, j: usize| (xs[r * d + j] - mu[r]) * rs[r];
    let n = T::of(d as f64);

    let mut dx = vec![T::zero(); xs.len()];
    dx.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, dxr)| {
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
    let dgamma = column_sums(rows, d, |r, j| dys[r * d + j] * xhat(r, j));
    let dbeta = column_sums(rows, d, |r, j| dys[r * d + j]);
    Ok((Tensor::from_vec(dx, input.shape().clone())?, Tensor::from_vec(dgamma, [d])?, Tensor::from_vec(dbeta, [d])?))
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
