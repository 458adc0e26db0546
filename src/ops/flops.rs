//! The floating-point work of a forward pass, counted from the shapes of the ops that do matrix
//! work: products (matmul, linear), convolutions, attention (QK^T and PV over the key-query
//! pairs the mask lets through) and the InfoNCE logits. Element-wise work is left out, as in
//! the MFU of PaLM and llm.c. A backward pass does twice the matrix work of its forward, so a
//! training step costs three times the forward count ([`FlopCounts::training_step`]).
//!
//! The counts are analytic (shapes, not hardware counters), and they count the work done:
//! captions packed to their own lengths count their own lengths, not a padded context.

use std::cell::Cell;

use crate::backend::{AttnMask, Conv2dGeometry};

/// Forward FLOPs by kind of op.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlopCounts {
    pub gemm: f64,
    pub conv: f64,
    pub attention: f64,
    pub loss: f64,
}

impl FlopCounts {
    pub fn forward(&self) -> f64 {
        self.gemm + self.conv + self.attention + self.loss
    }

    /// Forward plus backward (twice the forward's matrix work).
    pub fn training_step(&self) -> f64 {
        3.0 * self.forward()
    }
}

impl std::ops::AddAssign for FlopCounts {
    fn add_assign(&mut self, other: FlopCounts) {
        self.gemm += other.gemm;
        self.conv += other.conv;
        self.attention += other.attention;
        self.loss += other.loss;
    }
}

thread_local! {
    /// None while nobody counts, so ops outside [`count`] cost nothing but this check.
    static COUNTS: Cell<Option<FlopCounts>> = const { Cell::new(None) };
}

/// Runs `f` and returns, beside its result, the forward FLOPs of the ops it ran on this thread.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, FlopCounts) {
    let outer = COUNTS.replace(Some(FlopCounts::default()));
    let result = f();
    let counted = COUNTS.replace(outer).unwrap_or_default();
    add(|c| *c += counted); // an enclosing count sees these ops too
    (result, counted)
}

/// Runs `f` with nothing it does counted: an unfused composition, whose work is counted as its
/// fused op's (the model's FLOPs, not the padded or masked work a composition also does).
pub(super) fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let outer = COUNTS.replace(None);
    let result = f();
    COUNTS.set(outer);
    result
}

fn add(update: impl FnOnce(&mut FlopCounts)) {
    if let Some(mut c) = COUNTS.get() {
        update(&mut c);
        COUNTS.set(Some(c));
    }
}

/// A batch of `batch` products of [m, k] by [k, n].
pub(super) fn gemm(batch: usize, m: usize, n: usize, k: usize) {
    add(|c| c.gemm += 2.0 * (batch * m * n * k) as f64);
}

/// A convolution of [n, c_in, ..] into [n, c_out, h_out, w_out] with a `kh x kw` kernel.
pub(super) fn conv(out: &[usize], c_in: usize, kernel: (usize, usize), geo: Conv2dGeometry) {
    let (outputs, taps) = (out.iter().product::<usize>(), c_in / geo.groups.max(1) * kernel.0 * kernel.1);
    add(|c| c.conv += 2.0 * (outputs * taps) as f64);
}

/// Attention of `heads` heads over `width` channels of q (and of k, v) on qkv [batch, len, 3 width].
pub(super) fn attention(batch: usize, len: usize, width: usize, mask: &AttnMask) {
    let pairs: usize = mask
        .sequences(batch, len)
        .iter()
        .enumerate()
        .map(|(s, seq)| (0..seq.len).map(|q| mask.key_range(s, q, seq.len).len()).sum::<usize>())
        .sum();
    // Per visible (query, key) pair and channel: one multiply-add in QK^T, one in PV.
    add(|c| c.attention += 4.0 * (pairs * width) as f64);
}

/// The [n, n] logits of n image and n text features of `dim` channels.
pub(super) fn contrastive_logits(n: usize, dim: usize) {
    add(|c| c.loss += 2.0 * (n * n * dim) as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_inside_count_only() {
        gemm(1, 2, 3, 4); // not counted: nobody is counting
        let ((), c) = count(|| {
            gemm(2, 3, 5, 7);
            attention(1, 4, 8, &AttnMask::causal());
            attention(2, 3, 8, &AttnMask::none());
            contrastive_logits(4, 16);
        });
        assert_eq!(c.gemm, 2.0 * 2.0 * 3.0 * 5.0 * 7.0);
        // causal 4: 1 + 2 + 3 + 4 = 10 pairs; full 2 x 3 x 3 = 18 pairs.
        assert_eq!(c.attention, 4.0 * (10.0 + 18.0) * 8.0);
        assert_eq!(c.loss, 2.0 * 16.0 * 16.0);
        assert_eq!(c.training_step(), 3.0 * c.forward());
    }
}
