//! 2-D convolution (NCHW, grouped, no bias) by im2col + GEMM.
//!
//! Forward runs samples in parallel. Backward computes input gradients per sample in
//! parallel and the weight gradient over fixed groups of samples, summed in group order
//! (deterministic whatever the thread count).

use gemm::Parallelism;

use super::matmul::gemm_into;
use rayon::prelude::*;

use crate::backend::Conv2dGeometry;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

/// Samples per task in the weight-gradient reduction.
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
    /// Input coordinate under output (oy, ox) and kernel tap (i, j), if inside the image.
    fn source(&self, oy: usize, ox: usize, i: usize, j: usize) -> Option<(usize, usize)> {
        let y = (oy * self.stride + i).checked_sub(self.pad)?;
        let x = (ox * self.stride + j).checked_sub(self.pad)?;
        (y < self.h && x < self.w).then_some((y, x))
    }
}

/// The [patch, ho*wo] im2col matrix of group `g` of one sample `img` ([c, h, w]).
fn im2col<T: Real>(d: &Dims, img: &[T], g: usize) -> Vec<T> {
    let so = d.spatial_out();
    let mut col = vec![T::zero(); d.patch() * so];
    for cc in 0..d.cg() {
        let plane = &img[(g * d.cg() + cc) * d.h * d.w..][..d.h * d.w];
        for i in 0..d.kh {
            for j in 0..d.kw {
                let row = &mut col[((cc * d.kh + i) * d.kw + j) * so..][..so];
                for oy in 0..d.ho {
                    for ox in 0..d.wo {
                        if let Some((y, x)) = d.source(oy, ox, i, j) {
                            row[oy * d.wo + ox] = plane[y * d.w + x];
                        }
                    }
                }
            }
        }
    }
    col
}

/// Adds the [patch, ho*wo] matrix `col` back into the image gradient of group `g`.
fn col2im<T: Real>(d: &Dims, col: &[T], g: usize, img: &mut [T]) {
    let so = d.spatial_out();
    for cc in 0..d.cg() {
        let plane = &mut img[(g * d.cg() + cc) * d.h * d.w..][..d.h * d.w];
        for i in 0..d.kh {
            for j in 0..d.kw {
                let row = &col[((cc * d.kh + i) * d.kw + j) * so..][..so];
                for oy in 0..d.ho {
                    for ox in 0..d.wo {
                        if let Some((y, x)) = d.source(oy, ox, i, j) {
                            plane[y * d.w + x] += row[oy * d.wo + ox];
                        }
                    }
                }
            }
        }
    }
}

pub fn forward<T: Real>(x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
    let d = Dims::of(x, w, geo);
    let (xs, ws) = (x.cpu_slice::<T>()?, w.cpu_slice::<T>()?);
    let (so, per_sample_in) = (d.spatial_out(), d.c * d.h * d.w);
    let mut y = vec![T::zero(); d.n * d.co * so];
    y.par_chunks_mut((d.co * so).max(1)).enumerate().for_each(|(s, ys)| {
        let img = &xs[s * per_sample_in..][..per_sample_in];
        for g in 0..d.groups {
            let col = im2col(&d, img, g);
            let wg = &ws[g * d.cog() * d.patch()..][..d.cog() * d.patch()];
            let yg = &mut ys[g * d.cog() * so..][..d.cog() * so];
            gemm_into(yg, wg, &col, (d.cog(), so, d.patch()), false, false, false, Parallelism::None);
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
    // dW_g = sum over samples of dY_g [cog, so] @ col_g^T [so, patch]. Samples are split
    // into fixed groups (not per thread), each summed in order, and the group partials are
    // added in group order: the result does not depend on the thread count.
    let partials: Vec<Vec<T>> = (0..d.n.div_ceil(SAMPLES_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let mut dw = vec![T::zero(); ws.len()];
            for s in task * SAMPLES_PER_TASK..((task + 1) * SAMPLES_PER_TASK).min(d.n) {
                let img = &xs[s * per_sample_in..][..per_sample_in];
                for g in 0..d.groups {
                    let col = im2col(&d, img, g);
                    let dyg = &dys[s * per_sample_out + g * d.cog() * so..][..d.cog() * so];
                    let dwg = &mut dw[g * d.cog() * d.patch()..][..d.cog() * d.patch()];
                    gemm_into(dwg, dyg, &col, (d.cog(), d.patch(), so), false, true, true, Parallelism::None);
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![T::zero(); ws.len()];
    for partial in &partials {
        dw.iter_mut().zip(partial).for_each(|(a, &b)| *a += b);
    }

    let dx = if need_dx {
        let mut dx = vec![T::zero(); xs.len()];
        dx.par_chunks_mut(per_sample_in.max(1)).enumerate().for_each(|(s, dxs)| {
            for g in 0..d.groups {
                // dcol [patch, so] = W_g^T [patch, cog] @ dY_g [cog, so]
                let wg = &ws[g * d.cog() * d.patch()..][..d.cog() * d.patch()];
                let dyg = &dys[s * per_sample_out + g * d.cog() * so..][..d.cog() * so];
                let mut dcol = vec![T::zero(); d.patch() * so];
                gemm_into(&mut dcol, wg, dyg, (d.patch(), so, d.cog()), true, false, false, Parallelism::None);
                col2im(&d, &dcol, g, dxs);
            }
        });
        Some(Tensor::from_vec(dx, x.dims().to_vec())?)
    } else {
        None
    };
    Ok((dx, Tensor::from_vec(dw, w.dims().to_vec())?))
}
