//! 2-D convolution (NCHW, grouped, no bias) by im2col + GEMM.
//!
//! Work is split into fixed tasks of `SAMPLES_PER_TASK` samples, run in parallel. A task
//! lays the im2col columns of its samples side by side, [patch, samples * ho * wo], so each
//! group is one GEMM per task rather than one small GEMM per sample. The weight gradient is
//! summed per task, then over tasks in task order (deterministic whatever the thread count).

use gemm::Parallelism;

use super::matmul::gemm_into;
use rayon::prelude::*;

use crate::backend::Conv2dGeometry;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// Samples per task: their im2col columns sit side by side, so one GEMM covers them all
/// (N = samples * ho * wo instead of ho * wo), and the weight gradient of a task is one
/// GEMM with a long reduction. Fixed, so results do not depend on the thread count.
const SAMPLES_PER_TASK: usize = 8;

/// All sizes of one convolution, derived once from the operand shapes (the GPU backend uses
/// them too).
pub(crate) struct Dims {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) co: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    pub(crate) groups: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
}

impl Dims {
    pub(crate) fn of(x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Self {
        let (n, c, h, wd) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
        let (co, kh, kw) = (w.dims()[0], w.dims()[2], w.dims()[3]);
        let ho = (h + 2 * geo.padding - kh) / geo.stride + 1;
        let wo = (wd + 2 * geo.padding - kw) / geo.stride + 1;
        Dims { n, c, h, w: wd, co, kh, kw, ho, wo, groups: geo.groups, stride: geo.stride, pad: geo.padding }
    }
    /// Input channels per group.
    pub(crate) fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    pub(crate) fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Rows of the im2col matrix of one group: cg * kh * kw.
    pub(crate) fn patch(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    pub(crate) fn spatial_out(&self) -> usize {
        self.ho * self.wo
    }
}

/// The output columns `lo..hi` whose input column `ox * stride + tap - pad` lies inside a
/// row of `extent` pixels.
fn valid_range(out: usize, extent: usize, stride: usize, tap: usize, pad: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(tap).div_ceil(stride).min(out);
    let hi = if extent + pad > tap { ((extent + pad - tap - 1) / stride + 1).min(out) } else { 0 };
    (lo, hi.max(lo))
}

/// One task's columns: the samples of `images` ([samples, c, h, w]) side by side, so `col`
/// is [patch, samples * ho * wo] for group `g`. Every element is written.
fn im2col<T: Real>(d: &Dims, images: &[T], g: usize, col: &mut [T]) {
    let (so, plane_len) = (d.spatial_out(), d.h * d.w);
    let samples = images.len() / (d.c * plane_len);
    let row_len = samples * so;
    for cc in 0..d.cg() {
        for i in 0..d.kh {
            let (oy_lo, oy_hi) = valid_range(d.ho, d.h, d.stride, i, d.pad);
            for j in 0..d.kw {
                let (ox_lo, ox_hi) = valid_range(d.wo, d.w, d.stride, j, d.pad);
                let row = &mut col[((cc * d.kh + i) * d.kw + j) * row_len..][..row_len];
                for (t, dst) in row.chunks_exact_mut(so).enumerate() {
                    let plane = &images[(t * d.c + g * d.cg() + cc) * plane_len..][..plane_len];
                    for (oy, line) in dst.chunks_exact_mut(d.wo).enumerate() {
                        if oy < oy_lo || oy >= oy_hi {
                            line.fill(T::zero());
                            continue;
                        }
                        let src = &plane[(oy * d.stride + i - d.pad) * d.w..][..d.w];
                        line[..ox_lo].fill(T::zero());
                        line[ox_hi..].fill(T::zero());
                        let x0 = ox_lo * d.stride + j - d.pad;
                        for (k, o) in line[ox_lo..ox_hi].iter_mut().enumerate() {
                            *o = src[x0 + k * d.stride];
                        }
                    }
                }
            }
        }
    }
}

/// Adds one task's column gradient `col` ([patch, samples * ho * wo]) back into the image
/// gradients `images` ([samples, c, h, w]) of group `g`.
fn col2im<T: Real>(d: &Dims, col: &[T], g: usize, images: &mut [T]) {
    let (so, plane_len) = (d.spatial_out(), d.h * d.w);
    let samples = images.len() / (d.c * plane_len);
    let row_len = samples * so;
    for cc in 0..d.cg() {
        for i in 0..d.kh {
            let (oy_lo, oy_hi) = valid_range(d.ho, d.h, d.stride, i, d.pad);
            for j in 0..d.kw {
                let (ox_lo, ox_hi) = valid_range(d.wo, d.w, d.stride, j, d.pad);
                let row = &col[((cc * d.kh + i) * d.kw + j) * row_len..][..row_len];
                for (t, src) in row.chunks_exact(so).enumerate() {
                    let plane = &mut images[(t * d.c + g * d.cg() + cc) * plane_len..][..plane_len];
                    for oy in oy_lo..oy_hi {
                        let line = &src[oy * d.wo..][ox_lo..ox_hi];
                        let dst = &mut plane[(oy * d.stride + i - d.pad) * d.w..][..d.w];
                        let x0 = ox_lo * d.stride + j - d.pad;
                        for (k, &v) in line.iter().enumerate() {
                            dst[x0 + k * d.stride] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Copies group `g` of a task's outputs `y` ([samples, co, ho*wo]) into the GEMM layout
/// `rows` ([cog, samples * ho*wo]).
fn gather_group<T: Real>(d: &Dims, y: &[T], g: usize, rows: &mut [T]) {
    let so = d.spatial_out();
    let samples = y.len() / (d.co * so);
    for (o, row) in rows.chunks_exact_mut(samples * so).enumerate() {
        for (t, dst) in row.chunks_exact_mut(so).enumerate() {
            dst.copy_from_slice(&y[(t * d.co + g * d.cog() + o) * so..][..so]);
        }
    }
}

/// The inverse of `gather_group`: GEMM layout `rows` into group `g` of `y`.
fn scatter_group<T: Real>(d: &Dims, rows: &[T], g: usize, y: &mut [T]) {
    let so = d.spatial_out();
    let samples = y.len() / (d.co * so);
    for (o, row) in rows.chunks_exact(samples * so).enumerate() {
        for (t, src) in row.chunks_exact(so).enumerate() {
            y[(t * d.co + g * d.cog() + o) * so..][..so].copy_from_slice(src);
        }
    }
}

pub fn forward<T: Real>(x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
    let d = Dims::of(x, w, geo);
    let (xs, ws) = (x.cpu_slice::<T>()?, w.cpu_slice::<T>()?);
    let (so, per_sample_in, per_sample_out) = (d.spatial_out(), d.c * d.h * d.w, d.co * d.spatial_out());
    let mut y = vec![T::zero(); d.n * per_sample_out];
    let task_out = (SAMPLES_PER_TASK * per_sample_out).max(1);
    y.par_chunks_mut(task_out).enumerate().for_each(|(task, ys)| {
        let samples = ys.len() / per_sample_out.max(1);
        let images = &xs[task * SAMPLES_PER_TASK * per_sample_in..][..samples * per_sample_in];
        let mut col = vec![T::zero(); d.patch() * samples * so];
        let mut rows = vec![T::zero(); d.cog() * samples * so];
        for g in 0..d.groups {
            im2col(&d, images, g, &mut col);
            let wg = &ws[g * d.cog() * d.patch()..][..d.cog() * d.patch()];
            gemm_into(&mut rows, wg, &col, (d.cog(), samples * so, d.patch()), false, false, false, Parallelism::None);
            scatter_group(&d, &rows, g, ys);
        }
    });
    Tensor::from_vec(y, [d.n, d.co, d.ho, d.wo])
}

pub fn backward<T: Real>(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    geo: Conv2dGeometry,
    need_dx: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let d = Dims::of(x, w, geo);
    let (xs, ws, dys) = (x.cpu_slice::<T>()?, w.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let (so, per_sample_in, per_sample_out) = (d.spatial_out(), d.c * d.h * d.w, d.co * d.spatial_out());
    let tasks = d.n.div_ceil(SAMPLES_PER_TASK);
    let mut dx = if need_dx { vec![T::zero(); xs.len()] } else { Vec::new() };
    // One task: its weight-gradient partial, and (when asked) its samples' input gradients.
    let run = |task: usize, dx_task: Option<&mut [T]>| {
        let first = task * SAMPLES_PER_TASK;
        let samples = SAMPLES_PER_TASK.min(d.n - first);
        let images = &xs[first * per_sample_in..][..samples * per_sample_in];
        let dy_task = &dys[first * per_sample_out..][..samples * per_sample_out];
        let mut col = vec![T::zero(); d.patch() * samples * so];
        let mut rows = vec![T::zero(); d.cog() * samples * so];
        let mut dw = vec![T::zero(); ws.len()];
        let mut dx_task = dx_task;
        for g in 0..d.groups {
            gather_group(&d, dy_task, g, &mut rows);
            // dW_g [cog, patch] = dY_g [cog, samples*so] @ col_g^T [samples*so, patch]
            im2col(&d, images, g, &mut col);
            let dwg = &mut dw[g * d.cog() * d.patch()..][..d.cog() * d.patch()];
            gemm_into(dwg, &rows, &col, (d.cog(), d.patch(), samples * so), false, true, false, Parallelism::None);
            if let Some(dx_task) = dx_task.as_deref_mut() {
                // dcol [patch, samples*so] = W_g^T [patch, cog] @ dY_g [cog, samples*so]
                let wg = &ws[g * d.cog() * d.patch()..][..d.cog() * d.patch()];
                gemm_into(
                    &mut col,
                    wg,
                    &rows,
                    (d.patch(), samples * so, d.cog()),
                    true,
                    false,
                    false,
                    Parallelism::None,
                );
                col2im(&d, &col, g, dx_task);
            }
        }
        dw
    };
    let partials: Vec<Vec<T>> = if need_dx {
        dx.par_chunks_mut((SAMPLES_PER_TASK * per_sample_in).max(1)).enumerate().map(|(t, c)| run(t, Some(c))).collect()
    } else {
        (0..tasks).into_par_iter().map(|t| run(t, None)).collect()
    };
    let mut dw = vec![T::zero(); ws.len()];
    for partial in &partials {
        dw.iter_mut().zip(partial).for_each(|(a, &b)| *a += b);
    }
    let dx = need_dx.then(|| Tensor::from_vec(dx, x.dims().to_vec())).transpose()?;
    Ok((dx, Tensor::from_vec(dw, w.dims().to_vec())?))
}
