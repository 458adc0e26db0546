//! BatchNorm2d over the N, H and W of NCHW tensors: per-channel statistics, and a ReLU after
//! it fused on request. The fused ReLU's backward recomputes its mask from x with the scale and
//! shift the forward returned, in the same arithmetic, so the two agree element for element.

use std::borrow::Cow;
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

/// A channel's `y = x * scale + shift`.
#[derive(Clone, Copy)]
struct Affine<T> {
    scale: T,
    shift: T,
}

impl<T: Real> Affine<T> {
    /// The scale and shift of `(x - mean) * rstd * gamma + beta`.
    fn of(mean: T, rstd: T, gamma: T, beta: T) -> Self {
        Affine { scale: rstd * gamma, shift: beta - mean * rstd * gamma }
    }

    /// The channel's output before any activation.
    fn apply(self, x: T) -> T {
        x * self.scale + self.shift
    }
}

/// Whether the ReLU passes `z` through: it cuts zero, negatives and NaN, as the kernels do.
fn relu_passes<T: Real>(z: T) -> bool {
    z > T::zero()
}

/// The affines of every channel.
fn affines<T: Real>(gamma: &[T], beta: &[T], mean: &[T], rstd: &[T]) -> Vec<Affine<T>> {
    (0..gamma.len()).map(|ch| Affine::of(mean[ch], rstd[ch], gamma[ch], beta[ch])).collect()
}

/// The [2, C] table of [`crate::backend::BatchNormOut::affine`]: scales, then shifts.
fn affine_table<T: Real>(affines: &[Affine<T>]) -> Result<Tensor> {
    let table = affines.iter().map(|a| a.scale).chain(affines.iter().map(|a| a.shift)).collect();
    Tensor::from_vec(table, [2, affines.len()])
}

/// Reads [`affine_table`] back.
fn read_affines<T: Real>(table: &Tensor) -> Result<Vec<Affine<T>>> {
    let values = table.cpu_slice::<T>()?;
    let (scales, shifts) = values.split_at(values.len() / 2);
    Ok(scales.iter().zip(shifts).map(|(&scale, &shift)| Affine { scale, shift }).collect())
}

/// y = x * scale[c] + shift[c], plane by plane, then max(y, 0) if `relu`.
fn normalize<T: Real>(x: &Tensor, affines: &[Affine<T>], relu: bool) -> Result<Tensor> {
    let (_, c, hw) = layout(x);
    let xs = x.cpu_slice::<T>()?;
    let mut y = vec![T::zero(); xs.len()];
    y.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, yp)| {
        let a = affines[plane % c];
        let xp = &xs[plane * hw..(plane + 1) * hw];
        yp.iter_mut().zip(xp).for_each(|(o, &v)| {
            let z = a.apply(v);
            *o = if relu && !relu_passes(z) { T::zero() } else { z };
        });
    });
    Tensor::from_vec(y, x.dims().to_vec())
}

fn rstd_of<T: Real>(var: &[T], eps: f64) -> Vec<T> {
    var.iter().map(|&v| T::one() / (v + T::of(eps)).sqrt()).collect()
}

/// y, the statistics and the table of a forward normalising with `mean` and `var`.
fn forward<T: Real>(
    x: &Tensor,
    [gamma, beta]: [&Tensor; 2],
    mean: Vec<T>,
    var: Vec<T>,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOut> {
    let c = mean.len();
    let affines = affines(gamma.cpu_slice::<T>()?, beta.cpu_slice::<T>()?, &mean, &rstd_of(&var, eps));
    Ok(BatchNormOut {
        y: normalize(x, &affines, relu)?,
        mean: Tensor::from_vec(mean, [c])?,
        var: Tensor::from_vec(var, [c])?,
        affine: affine_table(&affines)?,
    })
}

pub fn forward_train<T: Real>(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, relu: bool) -> Result<BatchNormOut> {
    let (n, _, hw) = layout(x);
    let xs = x.cpu_slice::<T>()?;
    let count = T::of((n * hw) as f64);
    let mean: Vec<T> = channel_sums(x, |_, plane| lanes::sum(&xs[plane])).into_iter().map(|s| s / count).collect();
    let var: Vec<T> = channel_sums(x, |ch, plane| lanes::sum_squares_about(&xs[plane], mean[ch]))
        .into_iter()
        .map(|s| s / count)
        .collect();
    forward(x, [gamma, beta], mean, var, eps, relu)
}

pub fn forward_eval<T: Real>(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOut> {
    forward(x, [gamma, beta], mean.cpu_slice::<T>()?.to_vec(), var.cpu_slice::<T>()?.to_vec(), eps, relu)
}

/// dy with the fused ReLU's mask applied when `relu`: zero where the forward's output was cut.
fn upstream<'a, T: Real>(x: &Tensor, dy: &'a Tensor, affine: &Tensor, relu: bool) -> Result<Cow<'a, [T]>> {
    let dys = dy.cpu_slice::<T>()?;
    if !relu {
        return Ok(Cow::Borrowed(dys));
    }
    let (_, c, hw) = layout(x);
    let (xs, affines) = (x.cpu_slice::<T>()?, read_affines::<T>(affine)?);
    let mut masked = dys.to_vec();
    masked.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, gp)| {
        let a = affines[plane % c];
        let xp = &xs[plane * hw..(plane + 1) * hw];
        gp.iter_mut().zip(xp).filter(|&(_, &v)| !relu_passes(a.apply(v))).for_each(|(g, _)| *g = T::zero());
    });
    Ok(Cow::Owned(masked))
}

#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    affine: &Tensor,
    dy: &Tensor,
    eps: f64,
    batch_stats: bool,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, hw) = layout(x);
    let (xs, g, mu) = (x.cpu_slice::<T>()?, gamma.cpu_slice::<T>()?, mean.cpu_slice::<T>()?);
    let dys = upstream::<T>(x, dy, affine, relu)?;
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
