//! A training step as one rank of a data-parallel world (issue 17): the contrast spans the
//! global batch ([`crate::dist::sharded_infonce`]) and each parameter's gradient is summed
//! across ranks before the update, so clipping and AdamW see the gradient of the global loss
//! on every rank and every rank's parameters stay equal. BatchNorm statistics stay per rank,
//! as in PyTorch's DDP without SyncBatchNorm.

use std::sync::Arc;

use crate::autograd::Gradients;
use crate::dist::{Collective, sharded_infonce};
use crate::error::{Error, Result};
use crate::model::{Buffers, CaptionPacking, ClipModel, Objectives};
use crate::nn::{ComputeCopies, ParamStore};
use crate::tensor::Tensor;

/// The objectives a rank can train today: CLIP's contrast. The mixture objectives contrast
/// against each pair's own mixture and the masked ones are per sample, so both could spread
/// over ranks, but no step does that yet.
pub fn check_objectives(objectives: &Objectives, momentum: bool) -> Result<()> {
    if *objectives != Objectives::default() || momentum {
        return Err(Error::config(
            "data-parallel training computes CLIP's contrast (--loss itc=1) without --momentum-targets for now",
        ));
    }
    Ok(())
}

/// This rank's share of the global batch's contrastive loss, [1], in the logit scale's dtype.
pub fn rank_loss(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    images: &Tensor,
    captions: &CaptionPacking,
    max_scale: Option<f64>,
    ranks: &Arc<dyn Collective>,
) -> Result<Tensor> {
    let (img, txt) = model.encode_pairs(params, buffers, images, captions)?;
    let scale = params.get(model.logit_scale());
    sharded_infonce(&img.to_dtype(scale.dtype())?, &txt.to_dtype(scale.dtype())?, scale, max_scale, Arc::clone(ranks))
}

/// Replaces each parameter's gradient in `grads` by its sum over the ranks, one collective per
/// parameter in the store's order (the same on every rank). The gradient sits on the compute
/// copy where there is one, as the optimizer looks it up.
pub fn sum_gradients(
    params: &ParamStore,
    copies: Option<&ComputeCopies>,
    grads: &mut Gradients,
    ranks: &dyn Collective,
) -> Result<()> {
    for id in params.ids() {
        let used = copies.and_then(|c| c.get(id)).unwrap_or(params.get(id));
        // Same model, same objectives: a parameter has a gradient on every rank or on none.
        if let Some(grad) = grads.get(used) {
            let summed = ranks.all_reduce_sum(grad)?;
            grads.set(used, summed);
        }
    }
    Ok(())
}
