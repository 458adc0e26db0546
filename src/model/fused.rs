//! Modality-fused execution of the two towers: the layers run in step, and in each
//! modality-shared layer the image rows and the packed caption rows go through one op each
//! (one two-segment LayerNorm, one QKV product, one attention, one out-projection, one MLP)
//! instead of one per tower. Unshared work (stems, embeddings, an unshared first text layer,
//! the parallel branch, the heads) runs per tower in between.

use super::config::{ModelConfig, Sharing};
use super::convnet::Mode;
use super::packing::CaptionPacking;
use super::transformer::Pooled;
use super::vision::BranchProgress;
use super::{Buffers, ClipModel};
use crate::backend::AttnMask;
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops;
use crate::tensor::{Table, Tensor};

/// How a model runs its image and text towers in a training forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModalityFusion {
    /// The towers in step, each modality-shared layer over the rows of both at once.
    Fused,
    /// The image tower, then the text tower: the unfused baseline.
    TwoPass,
}

impl ModalityFusion {
    /// Fused when the towers share weights, two passes otherwise (nothing to fuse).
    pub fn default_for(config: &ModelConfig) -> Self {
        match config.sharing {
            Sharing::None => ModalityFusion::TwoPass,
            Sharing::AttnMlp | Sharing::All => ModalityFusion::Fused,
        }
    }
}

/// Sizes of the image half of the joint rows.
#[derive(Clone, Copy)]
struct ImageRows {
    batch: usize,
    tokens: usize,
    width: usize,
}

impl ImageRows {
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }
}

/// The towers' token rows between two layers: apart, or joint through a run of shared layers,
/// so consecutive shared layers need no split and join between them.
enum Rows {
    /// Images [batch, tokens, width] and packed captions [1, caption tokens, width].
    Apart { image: Tensor, text: Tensor },
    /// [1, image rows + caption tokens, width], the images' rows first.
    Joint(Tensor),
}

impl Rows {
    fn joint(self, img: ImageRows) -> Result<Tensor> {
        match self {
            Rows::Joint(x) => Ok(x),
            Rows::Apart { image, text } => ops::concat(&[&image.reshape([1, img.rows(), img.width])?, &text], 1),
        }
    }

    fn apart(self, img: ImageRows) -> Result<(Tensor, Tensor)> {
        match self {
            Rows::Apart { image, text } => Ok((image, text)),
            Rows::Joint(x) => {
                let captions = x.dims()[1] - img.rows();
                let image = x.slice(1, 0, img.rows())?.reshape([img.batch, img.tokens, img.width])?;
                Ok((image, x.slice(1, img.rows(), captions)?))
            }
        }
    }
}

/// The attention mask of the joint rows: each image a sequence of its own with full attention,
/// then the captions, causal. One launch covers both modalities: the kernels take per sequence
/// whether it is causal, and a block works on one sequence, so the images cost what they cost
/// alone; a second launch would instead need the image and caption rows of qkv copied apart.
///
/// Its offsets are a table derived from the captions' offsets, so a rewrite of the captions
/// (a captured graph's next batch) rewrites them too.
fn joint_mask(img: ImageRows, captions: &CaptionPacking) -> AttnMask {
    let key = format!("joint offsets after {} images of {} tokens", img.batch, img.tokens);
    let offsets = captions.offsets.derived(&key, move |text| {
        let images = (0..=img.batch).map(|b| (b * img.tokens) as u32);
        images.chain(text.iter().skip(1).map(|&o| img.rows() as u32 + o)).collect()
    });
    let longest = captions.longest_bound().map(|bound| bound.max(img.tokens));
    captions.mask_with(offsets, img.batch, longest)
}

/// The rows of the joint output that the heads read: each image's CLS row, then each
/// caption's pooled row; derived from the captions' pooled rows like [`joint_mask`].
fn joint_pooled_rows(img: ImageRows, captions: &CaptionPacking) -> Table {
    let key = format!("joint pooled rows after {} images of {} tokens", img.batch, img.tokens);
    captions.pooled_rows.derived(&key, move |pooled| {
        let cls = (0..img.batch).map(|b| (b * img.tokens) as u32);
        cls.chain(pooled.iter().map(|&r| img.rows() as u32 + r)).collect()
    })
}

/// The towers' outputs as their heads read them.
enum PooledRows {
    /// The images' CLS rows, then the captions' pooled rows: [batch + captions, width].
    Joint(Tensor),
    /// The images' CLS rows [batch, width] and the captions' pooled rows [captions, width].
    Apart(Tensor, Tensor),
}

/// Image and text features ([batch, embed_dim] each, L2-normalised) with the layers in step and
/// every modality-shared layer fused. When both towers end at the same layer, that layer
/// computes only the rows the heads read ([`Pooled`]).
pub(super) fn encode_fused(
    model: &ClipModel,
    p: &ParamStore,
    bufs: &mut Buffers,
    images: &Tensor,
    captions: &CaptionPacking,
    mode: Mode,
) -> Result<(Tensor, Tensor)> {
    let (vision, text) = (&model.vision, &model.text);
    let image = vision.embed(p, bufs, images, mode)?;
    let img = ImageRows { batch: image.dims()[0], tokens: image.dims()[1], width: image.dims()[2] };
    let (text_mask, joint_mask) = (captions.mask(), joint_mask(img, captions));
    let pooled_joint_rows = joint_pooled_rows(img, captions);
    let mut branch = BranchProgress::start(images);
    let mut rows = Rows::Apart { image, text: text.embed(p, captions)? };
    let layers = vision.blocks.iter().map(|(layer, _)| layer + 1).max().unwrap_or(0).max(text.blocks.len());
    let last_blocks = layers.checked_sub(1).and_then(|last| Some((vision.block_at(last)?, text.blocks.get(last)?)));
    for layer in 0..layers {
        let (image_block, text_block) = (vision.block_at(layer), text.blocks.get(layer));
        while vision.lateral_before(&branch, layer) {
            let (image, text) = rows.apart(img)?;
            rows = Rows::Apart { image: vision.fuse_branch(&mut branch, p, bufs, &image, mode)?, text };
        }
        if let (Some((i, t)), true) = (last_blocks, layer + 1 == layers) {
            let pooled = if i.shares_weights_with(t) {
                let pooled = Pooled::Rows { rows: &pooled_joint_rows, split: img.batch };
                PooledRows::Joint(i.forward_fused(t, p, &rows.joint(img)?, img.rows(), &joint_mask, Some(pooled))?)
            } else {
                let (image, text_rows) = rows.apart(img)?;
                let text_pooled = Pooled::Rows { rows: &captions.pooled_rows, split: 0 };
                PooledRows::Apart(
                    i.forward_pooled(p, &image, &AttnMask::none(), Pooled::FirstToken)?,
                    t.forward_pooled(p, &text_rows, &text_mask, text_pooled)?,
                )
            };
            return heads(model, p, pooled, img.batch);
        }
        rows = match (image_block, text_block) {
            (Some(i), Some(t)) if i.shares_weights_with(t) => {
                Rows::Joint(i.forward_fused(t, p, &rows.joint(img)?, img.rows(), &joint_mask, None)?)
            }
            _ => {
                let (mut image, mut text) = rows.apart(img)?;
                if let Some(block) = image_block {
                    image = block.forward(p, &image, &AttnMask::none())?;
                }
                if let Some(block) = text_block {
                    text = block.forward(p, &text, &text_mask)?;
                }
                Rows::Apart { image, text }
            }
        };
    }
    let pooled = match rows {
        // One gather of the images' CLS rows and the captions' pooled rows.
        Rows::Joint(x) => PooledRows::Joint(Pooled::Rows { rows: &pooled_joint_rows, split: img.batch }.select(&x)?),
        Rows::Apart { image, text: packed } => {
            PooledRows::Apart(vision.pool(&image)?, text.pool(&packed, &captions.pooled_rows)?)
        }
    };
    heads(model, p, pooled, img.batch)
}

/// Both towers' heads on their pooled rows (`images` of them image rows).
fn heads(model: &ClipModel, p: &ParamStore, pooled: PooledRows, images: usize) -> Result<(Tensor, Tensor)> {
    let (vision, text) = (&model.vision.head, &model.text.head);
    let (image, text_pooled) = match pooled {
        // A single tower's one head, over both modalities' pooled rows at once.
        PooledRows::Joint(rows) if vision == text => return split_rows(&vision.forward(p, &rows)?, images),
        PooledRows::Joint(rows) => split_rows(&rows, images)?,
        PooledRows::Apart(image, text_pooled) => (image, text_pooled),
    };
    Ok((vision.forward(p, &image)?, text.forward(p, &text_pooled)?))
}

/// The first `first` rows of `x` [rows, d], and the rest.
fn split_rows(x: &Tensor, first: usize) -> Result<(Tensor, Tensor)> {
    Ok((x.slice(0, 0, first)?, x.slice(0, first, x.dims()[0] - first)?))
}
