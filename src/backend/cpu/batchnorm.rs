//! BatchNorm2d over the N, H and W of NCHW tensors: per-channel statistics.

use std::ops::Range;

use rayon::prelude::*;

use super::lanes;

use crate::backend::BatchNormOut;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// (batch, channels, spatial) of an NCHW tensor.
fn layout(x: &Tensor) -> (usize, usize, usize) {
    let d = x.dims();
    (d[0], d[1], d[2] * d[3])
}

/// Per channel, `plane_sum(ch, plane)` over the channel's plane of every sample (`plane`
/// indexes the tensor's elements), added in sample order.
fn channel_sums<T: Real>(x: &Tensor, plane_sum: impl Fn(usize, Range<usize>) -> T + Sync) -> Vec<T> {
    let (n, c, hw) = layout(x);
    (0..c)
        .into_par_iter()
        .map(|ch| (0..n).fold(T::zero(), |acc, s| acc + plane_sum(ch, (s * c + ch) * hw..(s * c + ch + 1) * hw)))
        .collect()
}

/// y = (x - mean[c]) * rstd[c] * gamma[c] + beta[c], plane by plane.
fn normalize<T: Real>(x: &Tensor, gamma: &[T], beta: &[T], mean: &[T], rstd: &[T]) -> Result<Tensor> {
    let (_, c, hw) = layout(x);
    let xs = x.cpu_slice::<T>()?;
    let mut y = vec![T::zero(); xs.len()];
    y.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, yp)| {
        let ch = plane % c;
        let xp = &xs[plane * hw..(plane + 1) * hw];
        let (a, b) = (rstd[ch] * gamma[ch], beta[ch] - mean[ch] * rstd[ch] * gamma[ch]);
        yp.iter_mut().zip(xp).for_each(|(o, &v)| *o = v * a + b);
    });
    Tensor::from_vec(y, x.dims().to_vec())
}

fn rstd_of<T: Real>(var: &[T], eps: f64) -> Vec<T> {
    var.iter().map(|&v| T::one() / (v + T::of(eps)).sqrt()).collect()
}

pub fn forward_train<T: Real>(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<BatchNormOut> {
    let (n, c, hw) = layout(x);
    let xs = x.cpu_slice::<T>()?;
    let count = T::of((n * hw) as f64);
    let mean: Vec<T> = channel_sums(x, |_, plane| lanes::sum(&xs[plane])).into_iter().map(|s| s / count).collect();
    let var: Vec<T> = channel_sums(x, |ch, plane| lanes::sum_squares_about(&xs[plane], mean[ch]))
        .into_iter()
        .map(|s| s / count)
        .collect();
    let y = normalize(x, gamma.cpu_slice::<T>()?, beta.cpu_slice::<T>()?, &mean, &rstd_of(&var, eps))?;
    Ok(BatchNormOut { y, mean: Tensor::from_vec(mean, [c])?, var: Tensor::from_vec(var, [c])? })
}

pub fn forward_eval<T: Real>(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let rstd = rstd_of(var.cpu_slice::<T>()?, eps);
    normalize(x, gamma.cpu_slice::<T>()?, beta.cpu_slice::<T>()?, mean.cpu_slice::<T>()?, &rstd)
}

pub fn backward<T: Real>(
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    dy: &Tensor,
    eps: f64,
    batch_stats: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, hw) = layout(x);
    let (xs, dys, g, mu) = (x.cpu_slice::<T>()?, dy.cpu_slice::<T>()?, gamma.cpu_slice::<T>()?, mean.cpu_slice::<T>()?);
    let rstd = rstd_of(var.cpu_slice::<T>()?, eps);
    let dbeta = channel_sums(x, |_, plane| lanes::sum(&dys[plane]));
    // d gamma = sum of dy * xhat = rstd * sum of dy * (x - mean).
    let dgamma: Vec<T> = channel_sums(x, |ch, plane| {
        rstd[ch] * lanes::lane_sum(&dys[plane.clone()], &xs[plane], |dy, x| dy * (x - mu[ch]))
    });
    let count = T::of((n * hw) as f64);

    let mut dx = vec![T::zero(); xs.len()];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, dxp)| {
        let ch = plane % c;
        let scale = g[ch] * rstd[ch];
        let (xp, dyp) = (&xs[plane * hw..][..hw], &dys[plane * hw..][..hw]);
        if batch_stats {
            // The batch mean and variance depend on x: subtract their paths.
            let (mean_dy, mean_dy_xhat) = (dbeta[ch] / count, dgamma[ch] / count);
            dxp.iter_mut().zip(xp).zip(dyp).for_each(|((o, &x), &dy)| {
                *o = scale * (dy - mean_dy - (x - mu[ch]) * rstd[ch] * mean_dy_xhat);
            });
        } else {
            dxp.iter_mut().zip(dyp).for_each(|(o, &dy)| *o = scale * dy);
        }
    });
    Ok((Tensor::from_vec(dx, x.dims().to_vec())?, Tensor::from_vec(dgamma, [c])?, Tensor::from_vec(dbeta, [c])?))
}
