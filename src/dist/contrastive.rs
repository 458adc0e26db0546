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
use crate::tensor::Tensor;

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
    const OP: &str = "sharded_infonce";
    if img.shape() != txt.shape() || img.rank() != 2 {
        return Err(Error::shape(OP, format!("image features {} and text features {}", img.shape(), txt.shape())));
    }
    let offset = comm.rank() * img.dims()[0];
    // The gathered texts are values here: their gradient returns through the reduce-scatter.
    let texts = comm.all_gather(&txt.detach())?;
    let shard = InfoNceShard { img, txt: &texts, logit_scale, max_scale, offset, weights: ContrastWeights::SYMMETRIC };
    let partial = backend::get(img.device()).infonce_partial(shard)?;
    let n = texts.dims()[0];
    let columns = comm.all_gather(&partial.col_lse.view_as([1, n].into())?)?;
    let out = backend::get(img.device()).infonce_finish(&partial, &columns)?;
    let share = out.loss.clone();
    let (img_saved, scale) = (img.clone(), logit_scale.clone());
    Ok(record1(OP, &[img, txt, logit_scale], share, move |dloss, _| {
        let img = img_saved;
        let shard = InfoNceShard {
            img: &img,
            txt: &texts,
            logit_scale: &scale,
            max_scale,
            offset,
            weights: ContrastWeights::SYMMETRIC,
        };
        let (d_img, d_texts, d_scale) = backend::get(dloss.device()).infonce_backward(shard, &out, dloss)?;
        let d_txt = comm.reduce_scatter_sum(&d_texts)?;
        Ok(vec![Some(d_img), Some(d_txt), Some(d_scale.view_as(scale.shape().clone())?)])
    }))
}
