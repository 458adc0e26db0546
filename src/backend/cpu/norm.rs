//! Row-wise normalisations over the last dimension: LayerNorm (with the fused residual
//! add), softmax and L2 normalisation.

use rayon::prelude::*;

use super::lanes;
use crate::backend::{LayerNormGrads, LayerNormOut, LnAffine, check_dx_plus};
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// Rows per task in LayerNorm's backward: each task sums its rows' d gamma and d beta, and
/// the tasks' partial sums are added in task order (deterministic for any thread count).
const ROWS_PER_TASK: usize = 32;

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
    let d = x.shape().last().max(1);
    let rows = x.shape().rows();
    let xs = x.cpu_slice::<T>()?;
    let summed: Option<Vec<T>> = match residual {
        Some(r) => {
            let mut sum = vec![T::zero(); xs.len()];
            let rs = r.cpu_slice::<T>()?;
            sum.par_chunks_mut(d).zip(xs.par_chunks(d).zip(rs.par_chunks(d))).for_each(|(o, (a, b))| {
                o.iter_mut().zip(a).zip(b).for_each(|((o, &a), &b)| *o = a + b);
            });
            Some(sum)
        }
        None => None,
    };
    let input: &[T] = summed.as_deref().unwrap_or(xs);
    let segments = Segments::<T>::of(affine, rows)?;
    let n = T::of(d as f64);
    let mut y = vec![T::zero(); input.len()];
    let stats: Vec<(T, T)> = y
        .par_chunks_mut(d)
        .zip(input.par_chunks(d))
        .enumerate()
        .map(|(r, (yr, xr))| {
            let (g, b) = segments.of_row(r);
            let mean = lanes::sum(xr) / n;
            let var = lanes::sum_squares_about(xr, mean) / n;
            let rstd = T::one() / (var + T::of(eps)).sqrt();
            for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                *o = (v - mean) * rstd * g + b;
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

/// d gamma and d beta summed over some rows, one pair per segment.
type AffinePartials<T> = [(Vec<T>, Vec<T>); 2];

pub fn layer_norm_backward<T: Real>(
    input: &Tensor,
    affine: &LnAffine,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    dx_plus: Option<&Tensor>,
) -> Result<LayerNormGrads> {
    check_dx_plus(input, dx_plus)?;
    let plus = dx_plus.map(Tensor::cpu_slice::<T>).transpose()?;
    let d = input.shape().last().max(1);
    let rows = input.shape().rows();
    let (xs, dys) = (input.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let segments = Segments::<T>::of(affine, rows)?;
    let (mu, rs) = (mean.cpu_slice::<T>()?, rstd.cpu_slice::<T>()?);
    let n = T::of(d as f64);

    // One pass: each task writes its rows of dx and sums their d gamma, d beta per segment.
    let mut dx = vec![T::zero(); xs.len()];
    let partials: Vec<AffinePartials<T>> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .map(|(task, dx_rows)| {
            let mut sums: AffinePartials<T> = [0, 1].map(|_| (vec![T::zero(); d], vec![T::zero(); d]));
            let mut xhat = vec![T::zero(); d];
            let mut gdy = vec![T::zero(); d];
            for (i, dxr) in dx_rows.chunks_mut(d).enumerate() {
                let r = task * ROWS_PER_TASK + i;
                let (xr, dyr) = (&xs[r * d..][..d], &dys[r * d..][..d]);
                let g = segments.of_row(r).0;
                let (dgamma, dbeta) = &mut sums[usize::from(r >= segments.first_rows)];
                for (((((xh, gd), &x), &dy), &g), (dg, db)) in
                    xhat.iter_mut().zip(&mut gdy).zip(xr).zip(dyr).zip(g).zip(dgamma.iter_mut().zip(dbeta.iter_mut()))
                {
                    *xh = (x - mu[r]) * rs[r];
                    *gd = g * dy;
                    *dg += dy * *xh;
                    *db += dy;
                }
                // dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy * xhat))
                let mean_gdy = lanes::sum(&gdy) / n;
                let mean_gdy_xhat = lanes::dot(&gdy, &xhat) / n;
                for ((o, &gd), &xh) in dxr.iter_mut().zip(&gdy).zip(&xhat) {
                    *o = rs[r] * (gd - mean_gdy - xh * mean_gdy_xhat);
                }
                if let Some(plus) = &plus {
                    dxr.iter_mut().zip(&plus[r * d..][..d]).for_each(|(o, &p)| *o += p);
                }
            }
            sums
        })
        .collect();
    let affine_grads = |segment: usize| -> Result<(Tensor, Tensor)> {
        let (mut dgamma, mut dbeta) = (vec![T::zero(); d], vec![T::zero(); d]);
        for [first, second] in &partials {
            let (pg, pb) = if segment == 0 { first } else { second };
            dgamma.iter_mut().zip(pg).for_each(|(a, &p)| *a += p);
            dbeta.iter_mut().zip(pb).for_each(|(a, &p)| *a += p);
        }
        Ok((Tensor::from_vec(dgamma, [d])?, Tensor::from_vec(dbeta, [d])?))
    };
    let (dgamma, dbeta) = affine_grads(0)?;
    let second = affine.second.as_ref().map(|_| affine_grads(1)).transpose()?;
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
