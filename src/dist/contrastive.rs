//! CLIP's symmetric InfoNCE over a batch spread across ranks, as MS-CLIP (`GATHER_TENSORS`)
//! and open_clip (`--gather-with-grad`) train: every rank holds n_local pairs of the global
//! batch of n = world_size * n_local, and rank r's pairs are the global pairs
//! `r * n_local .. (r + 1) * n_local`.
//!
//! Forward: the text features are all-gathered; each rank computes the logits rows of its own
//! images against every text (`Backend::infonce_partial`): its rows' log-sum-exps are complete,
//! its columns' cover its rows only, so those partials are all-gathered and combined
//! (`Backend::infonce_finish`). The rank's loss is its share; the shares sum to the global
//! loss. Backward (`Backend::infonce_backward`): the gradient of the global loss reaches the
//! rank's image features whole, and every text's in parts, one per rank, which a
//! reduce-scatter sums and hands to the rank that owns the text. The logit scale's gradient
//! is also a part: the step's gradient all-reduce adds the parts like any parameter's.
//!
//! Communication per step: the texts [n, d] and the column partials [world_size, n] gathered,
//! the text gradients [n, d] reduce-scattered. The images never move.

use std::sync::Arc;

use super::Collective;
use crate::autograd::record1;
use crate::backend::{self, ContrastWeights, InfoNceShard};
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// Which pairs a training loss's contrasts find their negatives among, and so what a loss
/// computed here is: the batch's, or this rank's share of the global batch's.
#[derive(Clone, Default)]
pub enum Negatives {
    /// The batch this process holds.
    #[default]
    Local,
    /// The global batch spread over the ranks of a data-parallel world: every loss is this
    /// rank's share, and the shares summed over the ranks are the global batch's loss.
    AcrossRanks(Arc<dyn Collective>),
}

impl Negatives {
    /// `ops::contrast`, or its [`sharded_contrast`] across the ranks.
    pub fn contrast(
        &self,
        rows: &Tensor,
        columns: &Tensor,
        logit_scale: &Tensor,
        max_scale: Option<f64>,
        weights: ContrastWeights,
    ) -> Result<Tensor> {
        match self {
            Negatives::Local => ops::contrast(rows, columns, logit_scale, max_scale, weights),
            Negatives::AcrossRanks(comm) => {
                sharded_contrast(rows, columns, logit_scale, max_scale, weights, Arc::clone(comm))
            }
        }
    }

    /// A loss that is a mean over this process's samples (masked modelling), as this rank's
    /// share of the mean of the ranks' means: divided by the world size, as PyTorch's DDP
    /// averages gradients. That is the global batch's mean when every rank averages over as
    /// many terms (MIM masks as many patches per image; MLM's masked tokens vary by caption).
    pub fn share_of_mean(&self, loss: Tensor) -> Result<Tensor> {
        match self {
            Negatives::Local => Ok(loss),
            Negatives::AcrossRanks(comm) if comm.world_size() == 1 => Ok(loss),
            Negatives::AcrossRanks(comm) => loss.scale(1.0 / comm.world_size() as f64),
        }
    }
}

/// This rank's share of the global batch's symmetric InfoNCE loss, shape [1]; `img` and `txt`
/// are the rank's [n_local, d] features (normally L2-normalised), the logits
/// `min(exp(logit_scale), max_scale) * img @ txt^T` over the global batch. With one rank it is
/// the loss of `ops::infonce`.
pub fn sharded_infonce(
    img: &Tensor,
    txt: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
    comm: Arc<dyn Collective>,
) -> Result<Tensor> {
    sharded_contrast(img, txt, logit_scale, max_scale, ContrastWeights::SYMMETRIC, comm)
}

/// [`sharded_infonce`] with its directions weighted as `ops::contrast` weighs them: the rank's
/// `rows` against every rank's `columns` (OneR's XMC contrasts each modality's rows against the
/// pairs' mixtures this way, `ContrastWeights::ROWS`). Where `columns` needs no gradient (a
/// detached target), its parts are not reduce-scattered.
pub fn sharded_contrast(
    rows: &Tensor,
    columns: &Tensor,
    logit_scale: &Tensor,
    max_scale: Option<f64>,
    weights: ContrastWeights,
    comm: Arc<dyn Collective>,
) -> Result<Tensor> {
    const OP: &str = "sharded_contrast";
    if rows.shape() != columns.shape() || rows.rank() != 2 {
        return Err(Error::shape(OP, format!("row features {} and column features {}", rows.shape(), columns.shape())));
    }
    let offset = comm.rank() * rows.dims()[0];
    // The gathered columns are values here: their gradient returns through the reduce-scatter.
    let gathered = comm.all_gather(&columns.detach())?;
    let shard = InfoNceShard { img: rows, txt: &gathered, logit_scale, max_scale, offset, weights };
    let partial = backend::get(rows.device()).infonce_partial(shard)?;
    let n = gathered.dims()[0];
    let column_lse = comm.all_gather(&partial.col_lse.view_as([1, n].into())?)?;
    let out = backend::get(rows.device()).infonce_finish(&partial, &column_lse)?;
    let share = out.loss.clone();
    let (rows_saved, scale) = (rows.clone(), logit_scale.clone());
    Ok(record1(OP, &[rows, columns, logit_scale], share, move |dloss, needs| {
        let rows = rows_saved;
        let shard = InfoNceShard { img: &rows, txt: &gathered, logit_scale: &scale, max_scale, offset, weights };
        let (d_rows, d_gathered, d_scale) = backend::get(dloss.device()).infonce_backward(shard, &out, dloss)?;
        // `needs` is the same on every rank (the same graph), so they skip the collective together.
        let d_columns = if needs[1] { Some(comm.reduce_scatter_sum(&d_gathered)?) } else { None };
        Ok(vec![Some(d_rows), d_columns, Some(d_scale.view_as(scale.shape().clone())?)])
    }))
}
