//! BatchNorm2d over the N, H and W of NCHW tensors: per-channel statistics.

use rayon::prelude::*;

use crate::backend::BatchNormOut;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// (batch, channels, spatial) of an NCHW tensor.
fn layout(x: &Tensor) -> (usize, usize, usize) {
    let d = x.dims();
    (d[0], d[1], d[2] * d[3])
}

/// Per channel, `f` applied to each (sample, element-of-plane) pair, summed in a fixed order.
fn channel_sums<T: Real>(x: &Tensor, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let (n, c, hw) = layout(x);
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = T::zero();
            for s in 0..n {
                let base = (s * c + ch) * hw;
                for k in 0..hw {
                    acc += f(ch, base + k);
                }
            }
            acc
        })
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
    let mean: Vec<T> = channel_sums(x, |_, i| xs[i]).into_iter().map(|s| s / count).collect();
    let var: Vec<T> =
        channel_sums(x, |ch, i| (xs[i] - mean[ch]) * (xs[i] - mean[ch])).into_iter().map(|s| s / count).collect();
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
    let xhat = |ch: usize, i: usize| (xs[i] - mu[ch]) * rstd[ch];
    let dbeta = channel_sums(x, |_, i| dys[i]);
    let dgamma = channel_sums(x, |ch, i| dys[i] * xhat(ch, i));
    let count = T::of((n * hw) as f64);

    let mut dx = vec![T::zero(); xs.len()];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, dxp)| {
        let ch = plane % c;
        let scale = g[ch] * rstd[ch];
        for (k, o) in dxp.iter_mut().enumerate() {
            let i = plane * hw + k;
            *o = if batch_stats {
                // The batch mean and variance depend on x: subtract their paths.
                scale * (dys[i] - dbeta[ch] / count - xhat(ch, i) * dgamma[ch] / count)
            } else {
                scale * dys[i]
            };
        }
    });
    Ok((Tensor::from_vec(dx, x.dims().to_vec())?, Tensor::from_vec(dgamma, [c])?, Tensor::from_vec(dbeta, [c])?))
}
