//! Losses: InfoNCE with a learnable temperature (symmetric or with weighted directions), and
//! cross-entropy.

use super::flops;
use super::fusion::{self, Fusion};
use super::{be, check_ids, check_rank, check_same_kind};
use crate::autograd::record1;
use crate::backend::{ContrastWeights, InfoNceShard};
use crate::error::{Error, Result};
use crate::tensor::{Table, Tensor};

/// CLIP's symmetric contrastive loss. `img` and `txt` are [n, d] (normally L2-normalised);
/// the logits are `min(exp(logit_scale), max_scale) * img @ txt^T` and pair i is the match
/// of row i and column i. Returns the mean of the two cross-entropies, shape [1].
pub fn infonce(img: &Tensor, txt: &Tensor, logit_scale: &Tensor, max_scale: Option<f64>) -> Result<Tensor> {
    contrast(img, txt, logit_scale, max_scale, ContrastWeights::SYMMETRIC)
}

/// InfoNCE between two sets of n features with its directions weighted (see
/// [`ContrastWeights`]): `ContrastWeights::ROWS` is the one-directional `NCE(rows, columns)`,
/// each row of `rows` against all of `columns` with its own pair as the positive.
pub fn contrast(
    rows: &Tensor,
    columns: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
    weights: ContrastWeights,
) -> Result<Tensor> {
    const OP: &str = "infonce";
    check_same_kind(OP, &[rows, columns, logit_scale])?;
    check_rank(OP, "row features", rows, &[2])?;
    if rows.shape() != columns.shape() || rows.dims()[0] == 0 {
        return Err(Error::shape(OP, format!("row features {} and column features {}", rows.shape(), columns.shape())));
    }
    if logit_scale.numel() != 1 {
        return Err(Error::shape(OP, format!("logit_scale must have one element, shape is {}", logit_scale.shape())));
    }
    if let Some(m) = max_scale.filter(|m| m.is_nan() || *m <= 0.0) {
        return Err(Error::invalid(OP, format!("max_scale must be positive, got {m}")));
    }
    weights.check(OP)?;
    flops::contrastive_logits(rows.dims()[0], rows.dims()[1]);
    if fusion::is_off(Fusion::InfoNce) {
        return flops::uncounted(|| super::unfused::contrast(rows, columns, logit_scale, max_scale, weights));
    }
    let out = be(rows).infonce(InfoNceShard::whole(rows, columns, logit_scale, max_scale).with_weights(weights))?;
    let loss = out.loss.clone();
    let (r, c, s) = (rows.clone(), columns.clone(), logit_scale.clone());
    let scale_shape = logit_scale.shape().clone();
    Ok(record1(OP, &[rows, columns, logit_scale], loss, move |dloss, _| {
        let pairs = InfoNceShard::whole(&r, &c, &s, max_scale).with_weights(weights);
        let (dr, dc, ds) = be(dloss).infonce_backward(pairs, &out, dloss)?;
        Ok(vec![Some(dr), Some(dc), Some(ds.view_as(scale_shape)?)])
    }))
}

/// A target [`cross_entropy`] skips (PyTorch's `ignore_index`): its row adds nothing to the loss
/// and gets no gradient. Tables padded to a fixed length for a captured graph pad with it.
pub const IGNORE_TARGET: u32 = u32::MAX;

/// Mean cross-entropy of [n, classes] logits against class indices, over the rows whose target
/// is not [`IGNORE_TARGET`] (0 when every row's is). The targets are a [`Table`], so a captured
/// graph reads whatever a later step writes into them.
pub fn cross_entropy(logits: &Tensor, targets: &Table) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    check_rank(OP, "logits", logits, &[2])?;
    let (n, classes) = (logits.dims()[0], logits.dims()[1]);
    if targets.len() != n || n == 0 {
        return Err(Error::shape(OP, format!("{} targets for logits {}", targets.len(), logits.shape())));
    }
    let counted: Vec<u32> = targets.words().iter().copied().filter(|&t| t != IGNORE_TARGET).collect();
    check_ids(OP, &counted, classes)?;
    let (loss, lse) = be(logits).cross_entropy(logits, targets)?;
    let (z, targets) = (logits.clone(), targets.clone());
    Ok(record1(OP, &[logits], loss, move |dloss, _| {
        Ok(vec![Some(be(dloss).cross_entropy_backward(&z, &lse, &targets, dloss)?)])
    }))
}
