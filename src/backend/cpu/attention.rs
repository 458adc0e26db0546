//! Multi-head scaled dot-product attention on packed [batch, len, 3*width] projections.
//!
//! The reference keeps the flash-attention contract: forward saves only the per-query
//! log-sum-exp, backward recomputes the probabilities from it. Each (batch, head) pair is an
//! independent task; results are gathered into the interleaved head layout afterwards.

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
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
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
            let mut out = vec![T::zero(); g.len * dh];
            let mut lse = vec![T::neg_infinity(); g.len];
            let mut scores = vec![T::zero(); g.len];
            for i in 0..g.len {
                let q = &xs[g.qkv_at(b, i, 0, h)..][..dh];
                let mut max = T::neg_infinity();
                for j in 0..g.len {
                    if mask.allows(b, i, j) {
                        scores[j] = dot(q, &xs[g.qkv_at(b, j, 1, h)..][..dh]) * scale;
                        max = max.max(scores[j]);
                    }
                }
                if max == T::neg_infinity() {
                    continue; // no visible key: zero output, lse stays -inf
                }
                let mut sum = T::zero();
                let o = &mut out[i * dh..(i + 1) * dh];
                for j in (0..g.len).filter(|&j| mask.allows(b, i, j)) {
                    let p = (scores[j] - max).exp();
                    sum += p;
                    let v = &xs[g.qkv_at(b, j, 2, h)..][..dh];
                    o.iter_mut().zip(v).for_each(|(a, &vv)| *a += p * vv);
                }
                o.iter_mut().for_each(|a| *a = *a / sum);
                lse[i] = max + sum.ln();
            }
            (out, lse)
        })
        .collect();

    let mut out = vec![T::zero(); g.batch * g.len * g.width];
    let mut lse = vec![T::zero(); g.batch * g.heads * g.len];
    for (bh, (o, l)) in per_head.iter().enumerate() {
        let (b, h) = (bh / g.heads, bh % g.heads);
        for t in 0..g.len {
            out[g.out_at(b, t, h)..][..dh].copy_from_slice(&o[t * dh..(t + 1) * dh]);
        }
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
            let mut grads = [vec![T::zero(); g.len * dh], vec![T::zero(); g.len * dh], vec![T::zero(); g.len * dh]];
            for i in 0..g.len {
                let lse_i = ls[bh * g.len + i];
                if lse_i == T::neg_infinity() {
                    continue;
                }
                let q = &xs[g.qkv_at(b, i, 0, h)..][..dh];
                let d_o = &dos[g.out_at(b, i, h)..][..dh];
                // D_i = <dO_i, O_i> = sum_j P_ij <dO_i, v_j>
                let delta = dot(d_o, &os[g.out_at(b, i, h)..][..dh]);
                for j in (0..g.len).filter(|&j| mask.allows(b, i, j)) {
                    let k = &xs[g.qkv_at(b, j, 1, h)..][..dh];
                    let v = &xs[g.qkv_at(b, j, 2, h)..][..dh];
                    let p = (dot(q, k) * scale - lse_i).exp();
                    let ds = p * (dot(d_o, v) - delta);
                    for c in 0..dh {
                        grads[0][i * dh + c] += ds * scale * k[c];
                        grads[1][j * dh + c] += ds * scale * q[c];
                        grads[2][j * dh + c] += p * d_o[c];
                    }
                }
            }
            grads
        })
        .collect();

    let mut dqkv = vec![T::zero(); xs.len()];
    for (bh, grads) in per_head.iter().enumerate() {
        let (b, h) = (bh / g.heads, bh % g.heads);
        for (which, grad) in grads.iter().enumerate() {
            for t in 0..g.len {
                dqkv[g.qkv_at(b, t, which, h)..][..dh].copy_from_slice(&grad[t * dh..(t + 1) * dh]);
            }
        }
    }
    Tensor::from_vec(dqkv, qkv.dims().to_vec())
}
