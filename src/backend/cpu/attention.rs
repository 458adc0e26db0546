//! Multi-head scaled dot-product attention on packed [batch, len, 3*width] projections.
//!
//! The reference keeps the flash-attention contract: forward saves only the per-query
//! log-sum-exp, backward recomputes the probabilities from it. Each sequence is an independent
//! task that owns its tokens' rows of the output (sequences cover the tokens in order), so it
//! writes its results in place; inside, each head's products read its q, k, v columns of the
//! packed rows in place and write its output (or gradient) columns in place, by strides, with
//! no gathered copies. A sequence is a batch row, or one of the sequences packed into row 0
//! ([`AttnMask::sequence_offsets`]). Every mask leaves a query one contiguous range of visible
//! keys of its sequence ([`AttnMask::key_range`]).
//!
//! Inside a task the products are GEMMs on the task's [n, n] score matrix (the `gemm` crate,
//! single-threaded: the tasks are the parallelism), with the softmax and its gradient applied
//! row by row between them; masked scores are zero probabilities. The forward softmax takes one
//! exponential per score (normalised by the reciprocal of the sum), the backward one per score
//! from the saved log-sum-exp. Dot products written as
//! loops could not be vectorised (a float sum's order is fixed), which made this op most of
//! the CPU step's attention time (docs/benchmarks.md).

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use super::lanes;
use super::matmul::{GemmSpec, Strided, gemm_strided};
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

    /// Head `h` of block `which` (0 q, 1 k, 2 v) of sequence `s` in packed qkv, read in place:
    /// its n rows of head_dim, 3 * width apart.
    fn qkv_head<'a, T>(&self, qkv: &'a [T], s: usize, which: usize, h: usize) -> Strided<&'a [T]> {
        Strided { data: &qkv[self.qkv_at(s, 0, which, h)..], row_stride: 3 * self.width }
    }

    /// Head `h` of sequence `s` in a [batch, len, width] tensor (the output or its gradient).
    fn out_head<'a, T>(&self, out: &'a [T], s: usize, h: usize) -> Strided<&'a [T]> {
        Strided { data: &out[self.out_at(s, 0, h)..], row_stride: self.width }
    }
}

/// A contiguous [rows, n] matrix (scores, probabilities) as a GEMM operand.
fn square<T>(data: &[T], n: usize) -> Strided<&[T]> {
    Strided { data, row_stride: n }
}

/// A GEMM destination in place: rows of `row_stride` in `data`, from column `start` on.
fn columns<T>(data: &mut [T], start: usize, row_stride: usize) -> Strided<&mut [T]> {
    Strided { data: &mut data[start..], row_stride }
}

/// `dst = a b` (or `a^T b`, `a b^T` by the flags) for [m, k] x [k, n] operands, on this thread.
fn product<T: Real>(
    dst: Strided<&mut [T]>,
    a: Strided<&[T]>,
    b: Strided<&[T]>,
    mnk: (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) {
    gemm_strided(dst, a, b, GemmSpec { mnk, trans_a, trans_b, accumulate: false, par: Parallelism::None });
}

/// The scores of a row's `visible` keys, the others set to zero.
fn visible_part<T: Real>(row: &mut [T], visible: Range<usize>) -> &mut [T] {
    let (before, rest) = row.split_at_mut(visible.start);
    let (seen, after) = rest.split_at_mut(visible.len());
    before.iter_mut().chain(after).for_each(|p| *p = T::zero());
    seen
}

/// Row `i`'s probabilities over its visible keys, in place of its raw scores; the other keys
/// get zero. Returns the log-sum-exp of the scaled scores (forward).
fn softmax_row<T: Real>(row: &mut [T], visible: Range<usize>, scale: T) -> T {
    let seen = visible_part(row, visible);
    seen.iter_mut().for_each(|x| *x *= scale);
    let max = lanes::max(seen);
    seen.iter_mut().for_each(|x| *x = (*x - max).fast_exp());
    let sum = lanes::sum(seen);
    let inverse = T::one() / sum;
    seen.iter_mut().for_each(|x| *x *= inverse);
    max + sum.ln()
}

/// Row `i`'s probabilities again from the forward's log-sum-exp (backward), in place of its
/// raw scores; the other keys get zero.
fn probabilities_from_lse<T: Real>(row: &mut [T], visible: Range<usize>, scale: T, lse: T) {
    visible_part(row, visible).iter_mut().for_each(|x| *x = (*x * scale - lse).fast_exp());
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
            if n == 0 {
                return Vec::new();
            }
            let mut p = vec![T::zero(); n * n];
            (0..g.heads)
                .map(|h| {
                    let [q, k, v] = [0, 1, 2].map(|which| g.qkv_head(xs, s, which, h));
                    // P = softmax(q k^T * scale) under the mask, then out = P v, written in place.
                    product(columns(&mut p, 0, n), q, k, (n, n, dh), false, true);
                    let mut lse = vec![T::neg_infinity(); n];
                    for (i, row) in p.chunks_mut(n).enumerate() {
                        let visible = mask.key_range(s, i, n);
                        if visible.is_empty() {
                            row.iter_mut().for_each(|x| *x = T::zero()); // zero output, lse stays -inf
                            continue;
                        }
                        lse[i] = softmax_row(row, visible, scale);
                    }
                    product(columns(out_block, h * dh, g.width), square(&p, n), v, (n, dh, n), false, false);
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
        if n == 0 {
            return;
        }
        let (mut p, mut ds) = (vec![T::zero(); n * n], vec![T::zero(); n * n]);
        for h in 0..g.heads {
            let [q, k, v] = [0, 1, 2].map(|which| g.qkv_head(xs, s, which, h));
            let d_out = g.out_head(dos, s, h);
            // P again, from the saved log-sum-exp (rows with none visible stay zero).
            product(columns(&mut p, 0, n), q, k, (n, n, dh), false, true);
            for (i, row) in p.chunks_mut(n).enumerate() {
                let lse_i = ls[g.lse_at(s, i, h)];
                if lse_i == T::neg_infinity() {
                    row.iter_mut().for_each(|x| *x = T::zero());
                } else {
                    probabilities_from_lse(row, mask.key_range(s, i, n), scale, lse_i);
                }
            }
            // dv = P^T dO; dP = dO v^T; dS = P * (dP - D_i) * scale with D_i = <dO_i, O_i>;
            // dq = dS k; dk = dS^T q. The gradients are written in place into dqkv's rows.
            let column = |which: usize| which * g.width + h * dh;
            product(columns(dqkv_block, column(2), 3 * g.width), square(&p, n), d_out, (n, dh, n), true, false);
            product(columns(&mut ds, 0, n), d_out, v, (n, n, dh), false, true);
            for (i, (ds_row, p_row)) in ds.chunks_mut(n).zip(p.chunks(n)).enumerate() {
                let delta = lanes::dot(&dos[g.out_at(s, i, h)..][..dh], &os[g.out_at(s, i, h)..][..dh]);
                ds_row.iter_mut().zip(p_row).for_each(|(d, &p)| *d = p * (*d - delta) * scale);
            }
            product(columns(dqkv_block, column(0), 3 * g.width), square(&ds, n), k, (n, dh, n), false, false);
            product(columns(dqkv_block, column(1), 3 * g.width), square(&ds, n), q, (n, dh, n), true, false);
        }
    });
    Tensor::from_vec(dqkv, qkv.dims().to_vec())
}
