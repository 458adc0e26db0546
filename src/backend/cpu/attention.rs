//! Multi-head scaled dot-product attention on packed [batch, len, 3*width] projections.
//!
//! The reference keeps the flash-attention contract: forward saves only the per-query
//! log-sum-exp, backward recomputes the probabilities from it. Each (batch, head) pair is an
//! independent task working on contiguous copies of its q, k, v rows; results are scattered
//! back into the interleaved head layout afterwards. Both masks leave every query a prefix of
//! visible keys ([`AttnMask::visible_keys`]), so the inner loops run over `0..visible`.

use rayon::prelude::*;

use crate::backend::AttnMask;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

struct Geometry {
    batch: usize,
    len: usize,
    width: usize,
    heads: usize,
    head_dim: usize,
}

impl Geometry {
    fn of(qkv: &Tensor, heads: usize) -> Self {
        let (batch, len, width) = (qkv.dims()[0], qkv.dims()[1], qkv.dims()[2] / 3);
        Geometry { batch, len, width, heads, head_dim: width / heads }
    }

    /// Offset in qkv of element 0 of head `h` of block `which` (0 q, 1 k, 2 v) at token `t`.
    fn qkv_at(&self, b: usize, t: usize, which: usize, h: usize) -> usize {
        (b * self.len + t) * 3 * self.width + which * self.width + h * self.head_dim
    }

    /// Offset in the [batch, len, width] output of head `h` at token `t`.
    fn out_at(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.len + t) * self.width + h * self.head_dim
    }

    /// The [len, head_dim] rows of one head of `src`, made contiguous.
    fn gather<T: Real>(&self, src: &[T], offset: impl Fn(usize) -> usize) -> Vec<T> {
        (0..self.len).flat_map(|t| src[offset(t)..][..self.head_dim].iter().copied()).collect()
    }

    /// Writes contiguous [len, head_dim] rows back into the interleaved layout.
    fn scatter<T: Real>(&self, rows: &[T], dst: &mut [T], offset: impl Fn(usize) -> usize) {
        for t in 0..self.len {
            dst[offset(t)..][..self.head_dim].copy_from_slice(&rows[t * self.head_dim..][..self.head_dim]);
        }
    }
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |acc, (&x, &y)| acc + x * y)
}

/// y += a * x
fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
}

pub fn forward<T: Real>(qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let g = Geometry::of(qkv, heads);
    let xs = qkv.cpu_slice::<T>()?;
    let scale = T::of(1.0 / (g.head_dim as f64).sqrt());
    let dh = g.head_dim;

    // Per (b, h): the [len, head_dim] output and [len] log-sum-exp.
    let per_head: Vec<(Vec<T>, Vec<T>)> = (0..g.batch * g.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / g.heads, bh % g.heads);
            let [q, k, v] = [0, 1, 2].map(|which| g.gather(xs, |t| g.qkv_at(b, t, which, h)));
            let mut out = vec![T::zero(); g.len * dh];
            let mut lse = vec![T::neg_infinity(); g.len];
            let mut scores = vec![T::zero(); g.len];
            for i in 0..g.len {
                let visible = mask.visible_keys(b, i, g.len);
                if visible == 0 {
                    continue; // no visible key: zero output, lse stays -inf
                }
                let qi = &q[i * dh..][..dh];
                let mut max = T::neg_infinity();
                for (j, s) in scores[..visible].iter_mut().enumerate() {
                    *s = dot(qi, &k[j * dh..][..dh]) * scale;
                    max = max.max(*s);
                }
                let mut sum = T::zero();
                let oi = &mut out[i * dh..][..dh];
                for (j, &s) in scores[..visible].iter().enumerate() {
                    let p = (s - max).exp();
                    sum += p;
                    axpy(oi, p, &v[j * dh..][..dh]);
                }
                oi.iter_mut().for_each(|o| *o = *o / sum);
                lse[i] = max + sum.ln();
            }
            (out, lse)
        })
        .collect();

    let mut out = vec![T::zero(); g.batch * g.len * g.width];
    let mut lse = vec![T::zero(); g.batch * g.heads * g.len];
    for (bh, (o, l)) in per_head.iter().enumerate() {
        let (b, h) = (bh / g.heads, bh % g.heads);
        g.scatter(o, &mut out, |t| g.out_at(b, t, h));
        lse[bh * g.len..(bh + 1) * g.len].copy_from_slice(l);
    }
    Ok((Tensor::from_vec(out, [g.batch, g.len, g.width])?, Tensor::from_vec(lse, [g.batch, g.heads, g.len])?))
}

pub fn backward<T: Real>(
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
    mask: &AttnMask,
) -> Result<Tensor> {
    let g = Geometry::of(qkv, heads);
    let (xs, os, ls, dos) =
        (qkv.cpu_slice::<T>()?, out.cpu_slice::<T>()?, lse.cpu_slice::<T>()?, dout.cpu_slice::<T>()?);
    let scale = T::of(1.0 / (g.head_dim as f64).sqrt());
    let dh = g.head_dim;

    // Per (b, h): dq, dk, dv, each [len, head_dim].
    let per_head: Vec<[Vec<T>; 3]> = (0..g.batch * g.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / g.heads, bh % g.heads);
            let [q, k, v] = [0, 1, 2].map(|which| g.gather(xs, |t| g.qkv_at(b, t, which, h)));
            let o = g.gather(os, |t| g.out_at(b, t, h));
            let d_out = g.gather(dos, |t| g.out_at(b, t, h));
            let [mut dq, mut dk, mut dv] = [0, 1, 2].map(|_| vec![T::zero(); g.len * dh]);
            for i in 0..g.len {
                let lse_i = ls[bh * g.len + i];
                if lse_i == T::neg_infinity() {
                    continue;
                }
                let (qi, doi) = (&q[i * dh..][..dh], &d_out[i * dh..][..dh]);
                // D_i = <dO_i, O_i> = sum_j P_ij <dO_i, v_j>
                let delta = dot(doi, &o[i * dh..][..dh]);
                let dqi = &mut dq[i * dh..][..dh];
                for j in 0..mask.visible_keys(b, i, g.len) {
                    let (kj, vj) = (&k[j * dh..][..dh], &v[j * dh..][..dh]);
                    let p = (dot(qi, kj) * scale - lse_i).exp();
                    let ds = p * (dot(doi, vj) - delta) * scale;
                    axpy(dqi, ds, kj);
                    axpy(&mut dk[j * dh..][..dh], ds, qi);
                    axpy(&mut dv[j * dh..][..dh], p, doi);
                }
            }
            [dq, dk, dv]
        })
        .collect();

    let mut dqkv = vec![T::zero(); xs.len()];
    for (bh, grads) in per_head.iter().enumerate() {
        let (b, h) = (bh / g.heads, bh % g.heads);
        for (which, grad) in grads.iter().enumerate() {
            g.scatter(grad, &mut dqkv, |t| g.qkv_at(b, t, which, h));
        }
    }
    Tensor::from_vec(dqkv, qkv.dims().to_vec())
}
