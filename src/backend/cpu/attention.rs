//! Multi-head scaled dot-product attention on packed [batch, len, 3*width] projections.
//!
//! The reference keeps the flash-attention contract: forward saves only the per-query
//! log-sum-exp, backward recomputes the probabilities from it. Each sequence is an independent
//! task that owns its tokens' rows of the output (sequences cover the tokens in order), so it
//! writes its results in place; inside, each head works on contiguous copies of its q, k, v
//! rows. A sequence is a batch row, or one of the sequences packed into row 0
//! ([`AttnMask::sequence_offsets`]). Both masks leave every query
//! a prefix of visible keys of its sequence ([`AttnMask::visible_keys`]).
//!
//! Inside a task the products are GEMMs on the task's [n, n] score matrix (the `gemm` crate,
//! single-threaded: the tasks are the parallelism), with the softmax and its gradient applied
//! row by row between them; masked scores are zero probabilities. Dot products written as
//! loops could not be vectorised (a float sum's order is fixed), which made this op most of
//! the CPU step's attention time (docs/benchmarks.md).

use gemm::Parallelism;
use rayon::prelude::*;

use super::lanes;
use super::matmul::gemm_into;
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
        let n = self.sequences[s].len;
        let mut rows = Vec::with_capacity(n * self.head_dim);
        for t in 0..n {
            rows.extend_from_slice(&src[offset(t)..][..self.head_dim]);
        }
        rows
    }

    /// `buf` ([tokens, row_len]) cut into each sequence's rows, in sequence order.
    fn split_by_sequence<'a, T>(&self, mut buf: &'a mut [T], row_len: usize) -> Vec<&'a mut [T]> {
        let mut blocks = Vec::with_capacity(self.sequences.len());
        for seq in &self.sequences {
            let (block, rest) = std::mem::take(&mut buf).split_at_mut(seq.len * row_len);
            blocks.push(block);
            buf = rest;
        }
        blocks
    }
}

/// Writes contiguous [n, head_dim] rows into a sequence's block of rows of `row_len`, at
/// column `column` of each.
fn put_rows<T: Real>(rows: &[T], head_dim: usize, block: &mut [T], row_len: usize, column: usize) {
    for (src, dst) in rows.chunks_exact(head_dim).zip(block.chunks_exact_mut(row_len)) {
        dst[column..][..head_dim].copy_from_slice(src);
    }
}

/// `dst = a b` (or `a^T b`, `a b^T` by the flags) for row-major [m, k] x [k, n] operands, on
/// this thread.
fn product<T: Real>(dst: &mut [T], a: &[T], b: &[T], mnk: (usize, usize, usize), trans_a: bool, trans_b: bool) {
    gemm_into(dst, a, b, mnk, trans_a, trans_b, false, Parallelism::None);
}

/// Row `i`'s probabilities over its visible keys, in place of its scaled scores: the softmax
/// with `lse` given (backward) or found and returned (forward, `lse` None); keys past
/// `visible` get zero.
fn softmax_row<T: Real>(row: &mut [T], visible: usize, scale: T, lse: Option<T>) -> T {
    let (seen, hidden) = row.split_at_mut(visible);
    hidden.iter_mut().for_each(|p| *p = T::zero());
    seen.iter_mut().for_each(|x| *x *= scale);
    let lse = lse.unwrap_or_else(|| {
        let max = lanes::max(seen);
        max + lanes::lane_sum(seen, seen, |x, _| (x - max).fast_exp()).ln()
    });
    seen.iter_mut().for_each(|x| *x = (*x - lse).fast_exp());
    lse
}

pub fn forward<T: Real>(qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let g = Geometry::of(qkv, heads, mask);
    let xs = qkv.cpu_slice::<T>()?;
    let scale = T::of(1.0 / (g.head_dim as f64).sqrt());
    let dh = g.head_dim;

    let mut out = vec![T::zero(); g.batch * g.len * g.width];
    // Per sequence: the [n] log-sum-exp of each head, written into place afterwards.
    let lse_per_sequence: Vec<Vec<Vec<T>>> = g
        .split_by_sequence(&mut out, g.width)
        .into_par_iter()
        .enumerate()
        .map(|(s, out_block)| {
            let n = g.sequences[s].len;
            (0..g.heads)
                .map(|h| {
                    let [q, k, v] = [0, 1, 2].map(|which| g.gather(s, xs, |t| g.qkv_at(s, t, which, h)));
                    // P = softmax(q k^T * scale) under the mask, then out = P v.
                    let mut p = vec![T::zero(); n * n];
                    product(&mut p, &q, &k, (n, n, dh), false, true);
                    let mut lse = vec![T::neg_infinity(); n];
                    for (i, row) in p.chunks_mut(n.max(1)).enumerate() {
                        let visible = mask.visible_keys(s, i, n);
                        if visible == 0 {
                            row.iter_mut().for_each(|x| *x = T::zero()); // zero output, lse stays -inf
                            continue;
                        }
                        lse[i] = softmax_row(row, visible, scale, None);
                    }
                    let mut o = vec![T::zero(); n * dh];
                    product(&mut o, &p, &v, (n, dh, n), false, false);
                    put_rows(&o, dh, out_block, g.width, h * dh);
                    lse
                })
                .collect()
        })
        .collect();

    let mut lse = vec![T::zero(); g.batch * g.heads * g.len];
    for (s, heads) in lse_per_sequence.iter().enumerate() {
        for (h, l) in heads.iter().enumerate() {
            lse[g.lse_at(s, 0, h)..][..l.len()].copy_from_slice(l);
        }
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

    let mut dqkv = vec![T::zero(); xs.len()];
    g.split_by_sequence(&mut dqkv, 3 * g.width).into_par_iter().enumerate().for_each(|(s, dqkv_block)| {
        let n = g.sequences[s].len;
        for h in 0..g.heads {
            let [q, k, v] = [0, 1, 2].map(|which| g.gather(s, xs, |t| g.qkv_at(s, t, which, h)));
            let o = g.gather(s, os, |t| g.out_at(s, t, h));
            let d_out = g.gather(s, dos, |t| g.out_at(s, t, h));
            // P again, from the saved log-sum-exp (rows with none visible stay zero).
            let mut p = vec![T::zero(); n * n];
            product(&mut p, &q, &k, (n, n, dh), false, true);
            for (i, row) in p.chunks_mut(n.max(1)).enumerate() {
                let lse_i = ls[g.lse_at(s, i, h)];
                if lse_i == T::neg_infinity() {
                    row.iter_mut().for_each(|x| *x = T::zero());
                } else {
                    softmax_row(row, mask.visible_keys(s, i, n), scale, Some(lse_i));
                }
            }
            // dv = P^T dO; dP = dO v^T; dS = P * (dP - D_i) * scale with D_i = <dO_i, O_i>;
            // dq = dS k; dk = dS^T q.
            let [mut dq, mut dk, mut dv] = [0, 1, 2].map(|_| vec![T::zero(); n * dh]);
            product(&mut dv, &p, &d_out, (n, dh, n), true, false);
            let mut ds = vec![T::zero(); n * n];
            product(&mut ds, &d_out, &v, (n, n, dh), false, true);
            for (i, (ds_row, p_row)) in ds.chunks_mut(n.max(1)).zip(p.chunks(n.max(1))).enumerate() {
                let delta = lanes::dot(&d_out[i * dh..][..dh], &o[i * dh..][..dh]);
                ds_row.iter_mut().zip(p_row).for_each(|(d, &p)| *d = p * (*d - delta) * scale);
            }
            product(&mut dq, &ds, &k, (n, dh, n), false, false);
            product(&mut dk, &ds, &q, (n, dh, n), true, false);
            for (which, grad) in [dq, dk, dv].iter().enumerate() {
                put_rows(grad, dh, dqkv_block, 3 * g.width, which * g.width + h * dh);
            }
        }
    });
    Tensor::from_vec(dqkv, qkv.dims().to_vec())
}
