//! The unfused compositions of the fused ops (see [`super::fusion`]): each is built from plain
//! differentiable ops only, so its backward pass is theirs, and it computes the fused op's
//! value up to rounding. They are what a framework without the fusion would run, and a second
//! derivation of each fused op's forward and backward for the tests.

use super::concat;
use crate::backend::{AttnMask, AttnSequence, ContrastWeights};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Added to the score of a key a query must not see: exp of it underflows to exactly 0 in f32
/// and bf16, and unlike -inf it keeps a row with no visible key finite.
const MASKED: f64 = -1e30;

/// `softmax(q k^T / sqrt(head_dim) + mask) v` with the scores stored, [heads * sequences, len,
/// len]. Packed sequences are first gathered into a batch padded to the longest (the padding
/// rows read a zero row and are dropped again at the end).
pub(super) fn attention(qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<Tensor> {
    let (batch, len, packed) = (qkv.dims()[0], qkv.dims()[1], qkv.dims()[2]);
    let width = packed / 3;
    let head_dim = width / heads;
    let sequences = mask.sequences(batch, len);
    let count = sequences.len();
    let longest = sequences.iter().map(|s| s.len).max().unwrap_or(0);
    let device = qkv.device();

    // [count, longest, 3 * width], sequence s in row s. Packed tokens of sequence s are at
    // start + p; position p past its length reads the zero row appended after the last token.
    let padded = match mask.sequence_offsets {
        None => qkv.clone(),
        Some(_) => {
            let zero_row = Tensor::zeros([1, packed], qkv.dtype()).to_device(device)?;
            let table = concat(&[&qkv.reshape([len, packed])?, &zero_row], 0)?;
            let ids: Vec<u32> = sequences
                .iter()
                .flat_map(|s| (0..longest).map(move |p| (if p < s.len { s.start + p } else { len }) as u32))
                .collect();
            table.index_rows(&ids)?.reshape([count, longest, packed])?
        }
    };
    // One of q, k, v as [heads * count, longest, head_dim], head-major so that the mask
    // [count, longest, longest] is the trailing part of the scores' shape.
    let split = |part: usize| -> Result<Tensor> {
        padded
            .slice(2, part * width, width)?
            .reshape([count, longest, heads, head_dim])?
            .permute(&[2, 0, 1, 3])?
            .reshape([heads * count, longest, head_dim])
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let mut scores = q.matmul(&k.transpose(1, 2)?)?.scale(1.0 / (head_dim as f64).sqrt())?;
    if let Some(bias) = mask_bias(mask, &sequences, longest, qkv.dtype())? {
        let bias = bias.to_device(device)?;
        scores = scores.reshape([heads, count, longest, longest])?.add_broadcast(&bias)?.reshape([
            heads * count,
            longest,
            longest,
        ])?;
    }
    let out = scores.softmax()?.matmul(&v)?; // [heads * count, longest, head_dim]
    let rows =
        out.reshape([heads, count, longest, head_dim])?.permute(&[1, 2, 0, 3])?.reshape([count * longest, width])?;
    match mask.sequence_offsets {
        None => rows.reshape([batch, len, width]),
        Some(_) => {
            let ids: Vec<u32> = sequences
                .iter()
                .enumerate()
                .flat_map(|(i, s)| (0..s.len).map(move |p| (i * longest + p) as u32))
                .collect();
            rows.index_rows(&ids)?.reshape([1, len, width])
        }
    }
}

/// The additive mask [count, longest, longest] on the host, or None when every query of every
/// sequence sees every key of the padded batch.
fn mask_bias(mask: &AttnMask, sequences: &[AttnSequence], longest: usize, dtype: DType) -> Result<Option<Tensor>> {
    let mut bias = vec![0.0; sequences.len() * longest * longest];
    let mut any = false;
    for (s, seq) in sequences.iter().enumerate() {
        for i in 0..longest {
            let visible = mask.key_range(s, i, seq.len);
            for j in 0..longest {
                if !visible.contains(&j) {
                    bias[(s * longest + i) * longest + j] = MASKED;
                    any = true;
                }
            }
        }
    }
    match any {
        true => Ok(Some(Tensor::from_f64(&bias, [sequences.len(), longest, longest], dtype)?)),
        false => Ok(None),
    }
}

/// InfoNCE with the [n, n] logits stored: the temperature `min(exp(s), max)` (as
/// `max - relu(max - exp(s))`, so a clamped scale gets no gradient, as in the fused op), one GEMM,
/// and the row-wise and column-wise cross-entropies weighted as `weights` says (a zero weight
/// skips its direction).
pub(super) fn contrast(
    rows: &Tensor,
    columns: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
    weights: ContrastWeights,
) -> Result<Tensor> {
    let n = rows.dims()[0];
    let scale = logit_scale.reshape([1])?.exp()?;
    let scale = match max_scale {
        None => scale,
        Some(m) => {
            let max = Tensor::full([1], m, rows.dtype()).to_device(rows.device())?;
            max.sub(&max.sub(&scale)?.relu()?)?
        }
    };
    let logits = rows.matmul(&columns.transpose(0, 1)?)?.reshape([n * n, 1])?.mul_broadcast(&scale)?.reshape([n, n])?;
    let targets = crate::tensor::Table::new((0..n as u32).collect());
    let weighted = |weight: f64, logits: Tensor| -> Result<Option<Tensor>> {
        (weight > 0.0).then(|| super::cross_entropy(&logits, &targets)?.scale(weight)).transpose()
    };
    match (weighted(weights.rows, logits.clone())?, weighted(weights.columns, logits.transpose(0, 1)?)?) {
        (Some(by_rows), Some(by_columns)) => by_rows.add(&by_columns),
        (Some(one), None) | (None, Some(one)) => Ok(one),
        (None, None) => Err(Error::invalid("infonce", "both direction weights are zero")),
    }
}
