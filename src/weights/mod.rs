//! Weights in and out of other projects' files. A checkpoint (`train::checkpoint`) holds a
//! whole training state in this project's own names; the files here hold a model's weights
//! alone, named and shaped as another project expects them: [`open_clip`]'s state dict for the
//! share-nothing models, [`msclip`] the original MS-CLIP code's for the MS-CLIP models.
//! Whatever comes in is checked against the model first ([`check`]): every tensor's name,
//! shape and dtype, every mismatch listed in one error.

pub mod check;
pub mod msclip;
pub mod open_clip;
mod values;

use std::path::Path;

use crate::error::Result;
use crate::model::{Buffers, ClipModel, Sharing};
use crate::nn::ParamStore;

/// Reads the weights file at `path` into `params` and `buffers`, those of `model`, in the
/// layout of the model's family: the original MS-CLIP code's state dict for a model whose
/// towers share attention and MLP weights, open_clip's for any other (whose importer says why
/// a model it cannot hold, a single tower, has no layout).
pub fn load(path: &Path, model: &ClipModel, params: &mut ParamStore, buffers: &mut Buffers) -> Result<()> {
    match model.config.sharing {
        Sharing::AttnMlp => msclip::load(path, model, params, buffers),
        Sharing::None | Sharing::All => open_clip::load(path, &model.config, params),
    }
}
