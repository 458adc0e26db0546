//! Multi-head scaled dot-product attention on packed [batch, len, 3*width] projections.
//!
//! The reference keeps the flash-attention contract: forward saves only the per-query
//! log-sum-exp, backward recomputes the probabilities from it. Each (sequence, head) pair is an
//! independent task working on contiguous copies of its q, k, v rows; results are scattered
//! back into the interleaved head layout afterwards. A sequence is a batch row, or one of the
//! sequences packed into row 0 ([`AttnMask::sequence_offsets`]). Both masks leave every query
//! a prefix of visible keys of its sequence ([`AttnMask::visible_keys`]), so the inner loops run
//! over `0..visible`.

use rayon::prelude::*;

use crate::backend::{AttnMask, AttnSequence};
use crate::error::Result;
use crate::tensor::{Real, Tensor};

struct Geometry {
    batch: usize,
    len: usize,
    width: usize,
    heads: usize,
    head_dim: usize,
    sequences: Vec<AttnSequence>,
}

impl Geometry {
    fn of(qkv: &Tensor, heads: usize, mask: &AttnMask) -> Self {
        let (batch, len, width) = (qkv.dims()[0], qkv.dims()[1], qkv.dims()[2] / 3);
        Geometry { batch, len, width, heads, head_dim: width / heads, sequences: mask.sequences(batch, len) }
    }

    /// The (sequence, head) tasks.
    fn tasks(&self) -> usize {
        self.sequences.len() * self.heads
    }

    /// Index among all of qkv's tokens of token `t` of sequence `s`.
    fn token(&self, s: usize, t: usize) -> usize {
        let seq = &self.sequences[s];
        seq.row * self.len + seq.start + t
    }

    /// Offset in qkv of element 0 of head `h` of block `which` (0 q, 1 k, 2 v) at token `t` of
    /// sequence `s`.
    fn qkv_at(&self, s: usize, t: usize, which: usize, h: usize) -> usize {
        self.token(s, t) * 3 * self.width + which * self.width + h * self.head_dim
    }

    /// Offset in the [batch, len, width] output of head `h` at token `t` of sequence `s`.
    fn out_at(&self, s: usize, t: usize, h: usize) -> usize {
        self.token(s, t) * self.width + h * self.head_dim
    }

    /// Offset in the [batch, heads, len] log-sum-exp of head `h` at token `t` of sequence `s`.
    fn lse_at(&self, s: usize, t: usize, h: usize) -> usize {
        let seq = &self.sequences[s];
        (seq.row * self.heads + h) * self.len + seq.start + t
    }

    /// The [n, head_dim] rows of one head of sequence `s` (n tokens) of `src`, made contiguous.
    fn gather<T: Real>(&self, s: usize, src: &[T], offset: impl Fn(usize) -> usize) -> Vec<T> {
        (0..self.sequences[s].len).flat_map(|t| src[offset(t)..][..self.head_dim].iter().copied()).collect()
    }

    /// Writes contiguous [n, head_dim] rows of sequence `s` back into the interleaved layout.
    fn scatter<T: Real>(&self, s: usize, rows: &[T], dst: &mut [T], offset: impl Fn(usize) -> usize) {
        for t in 0..self.sequences[s].len {
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
    let g = Geometry::of(qkv, heads, mask);
    let xs = qkv.cpu_slice::<T>()?;
    let scale = T::of(1.0 / (g.head_dim as f64).sqrt());
    let dh = g.head_dim;

    // Per (s, h): the [n, head_dim] output and [n] log-sum-exp.
    let per_head: Vec<(Vec<T>, Vec<T>)> = (0..g.tasks())
        .into_par_iter()
        .map(|sh| {
            let (s, h) = (sh / g.heads, sh % g.heads);
            let n = g.sequences[s].len;
            let [q, k, v] = [0, 1, 2].map(|which| g.gather(s, xs, |t| g.qkv_at(s, t, which, h)));
            let mut out = vec![T::zero(); n * dh];
            let mut lse = vec![T::neg_infinity(); n];
            let mut scores = vec![T::zero(); n];
            for i in 0..n {
                let visible = mask.visible_keys(s, i, n);
                if visible == 0 {
                    continue; // no visible key: zero output, lse stays -inf
                }
                let qi = &q[i * dh..][..dh];
                let mut max = T::neg_infinity();
                for (j, score) in scores[..visible].iter_mut().enumerate() {
                    *score = dot(qi, &k[j * dh..][..dh]) * scale;
                    max = max.max(*score);
                }
                let mut sum = T::zero();
                let oi = &mut out[i * dh..][..dh];
                for (j, &score) in scores[..visible].iter().enumerate() {
                    let p = (score - max).exp();
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
    for (sh, (o, l)) in per_head.iter().enumerate() {
        let (s, h) = (sh / g.heads, sh % g.heads);
        g.scatter(s, o, &mut out, |t| g.out_at(s, t, h));
        lse[g.lse_at(s, 0, h)..][..l.len()].copy_from_slice(l);
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
    let g = Geometry::of(qkv, heads, mask);
    let (xs, os, ls, dos) =
        (qkv.cpu_slice::<T>()?, out.cpu_slice::<T>()?, lse.cpu_slice::<T>()?, dout.cpu_slice::<T>()?);
    let scale = T::of(1.0 / (g.head_dim as f64).sqrt());
    let dh = g.head_dim;

    // Per (s, h): dq, dk, dv, each [n, head_dim].
    let per_head: Vec<[Vec<T>; 3]> = (0..g.tasks())
        .into_par_iter()
        .map(|sh| {
            let (s, h) = (sh / g.heads, sh % g.heads);
            let n = g.sequences[s].len;
            let [q, k, v] = [0, 1, 2].map(|which| g.gather(s, xs, |t| g.qkv_at(s, t, which, h)));
            let o = g.gather(s, os, |t| g.out_at(s, t, h));
            let d_out = g.gather(s, dos, |t| g.out_at(s, t, h));
            let [mut dq, mut dk, mut dv] = [0, 1, 2].map(|_| vec![T::zero(); n * dh]);
            for i in 0..n {
                let lse_i = ls[g.lse_at(s, i, h)];
                if lse_i == T::neg_infinity() {
                    continue;
                }
                let (qi, doi) = (&q[i * dh..][..dh], &d_out[i * dh..][..dh]);
                // D_i = <dO_i, O_i> = sum_j P_ij <dO_i, v_j>
                let delta = dot(doi, &o[i * dh..][..dh]);
                let dqi = &mut dq[i * dh..][..dh];
                for j in 0..mask.visible_keys(s, i, n) {
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
    for (sh, grads) in per_head.iter().enumerate() {
        let (s, h) = (sh / g.heads, sh % g.heads);
        for (which, grad) in grads.iter().enumerate() {
            g.scatter(s, grad, &mut dqkv, |t| g.qkv_at(s, t, which, h));
        }
    }
    Tensor::from_vec(dqkv, qkv.dims().to_vec())
}
