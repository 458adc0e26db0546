//! The heads of masked modelling (see [`super::masked`]), trained beside the contrastive
//! objectives and unused by evaluation.
//!
//! - MLM, BERT's head: the token's output row through LayerNorm, a dense layer with QuickGELU
//!   (the towers' activation) and a second LayerNorm, then scored against every vocabulary entry
//!   by the token embedding table itself (tied, as BERT ties its decoder) plus a bias per entry;
//!   cross-entropy against the original id. The tower runs pre-norm blocks, whose output rows are
//!   not normalised, hence the first LayerNorm (BERT's post-norm rows already are). The row is
//!   scaled by width^-1/2 before the tied decoder, as T5 does for its tied output layer: the
//!   MS-CLIP init draws token embeddings from N(0, 1), against which a unit-variance row would
//!   start with logits of std sqrt(width) (a loss of about 40 instead of ln(vocab) at width 128).
//! - MIM, pixel regression as SimMIM and MAE do it: the masked patch's output row through
//!   LayerNorm and a linear layer to its 3 x patch x patch normalised pixels; the mean squared
//!   error over the masked patches (MAE's loss; its per-patch target normalisation is not used).
//!
//! Which target OneR's MIM regresses is not known (oner-notes.md section 3): pixels are the
//! reconstruction here.

use super::builder::{Init, ModelSpec, Role};
use super::transformer::LayerNorm;
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::ops;
use crate::tensor::{Table, Tensor};

/// The init std of the heads' new weights and learned tokens (BERT's and MAE's 0.02).
const HEAD_STD: f64 = 0.02;

#[derive(Debug, Clone, Copy)]
pub struct MlmHead {
    /// The [MASK] token's embedding: the row after the vocabulary's in the token table.
    pub mask_embedding: ParamId,
    ln_in: LayerNorm,
    dense: ParamId,
    dense_bias: ParamId,
    ln_out: LayerNorm,
    decoder_bias: ParamId,
}

impl MlmHead {
    pub fn new(spec: &mut ModelSpec, width: usize, vocab: usize, ln_eps: f64, mask_std: f64) -> Self {
        MlmHead {
            mask_embedding: spec.param("mlm.mask_embedding", &[width], Init::Normal(mask_std), Role::Text),
            ln_in: LayerNorm::new(spec, "mlm.ln_in", width, ln_eps, Role::Text),
            dense: spec.param("mlm.dense.weight", &[width, width], Init::Normal(HEAD_STD), Role::Text),
            dense_bias: spec.param("mlm.dense.bias", &[width], Init::Zeros, Role::Text),
            ln_out: LayerNorm::new(spec, "mlm.ln_out", width, ln_eps, Role::Text),
            decoder_bias: spec.param("mlm.decoder_bias", &[vocab], Init::Zeros, Role::Text),
        }
    }

    /// The token table a masked caption is embedded from: the vocabulary's rows, then [MASK]'s.
    pub fn token_table(&self, p: &ParamStore, token_embedding: &Tensor) -> Result<Tensor> {
        let width = token_embedding.dims()[1];
        ops::concat(&[token_embedding, &p.get(self.mask_embedding).reshape([1, width])?], 0)
    }

    /// The mean cross-entropy of the predicted rows [rows, width] against their original ids
    /// (rows whose target is [`ops::IGNORE_TARGET`] skipped).
    pub fn loss(&self, p: &ParamStore, rows: &Tensor, token_embedding: &Tensor, targets: &Table) -> Result<Tensor> {
        let h = self.ln_in.forward(p, rows)?.linear(p.get(self.dense), Some(p.get(self.dense_bias)))?.quick_gelu()?;
        let width = token_embedding.dims()[1];
        let h = self.ln_out.forward(p, &h)?.scale((width as f64).powf(-0.5))?;
        let logits = h.linear(token_embedding, Some(p.get(self.decoder_bias)))?;
        ops::cross_entropy(&logits, targets)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MimHead {
    /// What a masked patch's token is replaced by, after the stem.
    pub mask_token: ParamId,
    ln: LayerNorm,
    proj: ParamId,
    bias: ParamId,
    patch: usize,
}

impl MimHead {
    pub fn new(spec: &mut ModelSpec, width: usize, patch: usize, ln_eps: f64) -> Self {
        let pixels = 3 * patch * patch;
        MimHead {
            mask_token: spec.param("visual.mim.mask_token", &[width], Init::Normal(HEAD_STD), Role::Vision),
            ln: LayerNorm::new(spec, "visual.mim.ln", width, ln_eps, Role::Vision),
            proj: spec.param("visual.mim.proj.weight", &[pixels, width], Init::Normal(HEAD_STD), Role::Vision),
            bias: spec.param("visual.mim.proj.bias", &[pixels], Init::Zeros, Role::Vision),
            patch,
        }
    }

    /// The mean squared error of the pixels predicted from the masked patches' output rows
    /// [masked, width] against theirs: rows `pixel_rows` of the images' patches.
    pub fn loss(&self, p: &ParamStore, rows: &Tensor, images: &Tensor, pixel_rows: &Table) -> Result<Tensor> {
        let predicted = self.ln.forward(p, rows)?.linear(p.get(self.proj), Some(p.get(self.bias)))?;
        let target = patch_pixels(images, self.patch)?.index_rows_by(pixel_rows)?;
        let error = predicted.sub(&target)?;
        error.mul(&error)?.mean_all()
    }
}

/// [batch, 3, side, side] images as their patches' pixels, [batch * grid^2, 3 * patch * patch]:
/// row-major over the grid, each row in the order of a patchify convolution's weights (channel,
/// then row, then column).
pub fn patch_pixels(images: &Tensor, patch: usize) -> Result<Tensor> {
    let (batch, side) = (images.dims()[0], images.dims()[2]);
    let grid = side / patch;
    images
        .reshape([batch, 3, grid, patch, grid, patch])?
        .permute(&[0, 2, 4, 1, 3, 5])?
        .reshape([batch * grid * grid, 3 * patch * patch])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn patch_pixels_follow_the_patchify_convolution() {
        // The patchify convolution with one output channel whose weight picks (c, i, j) reads
        // exactly element c * p * p + i * p + j of each patch's row.
        let (batch, side, patch) = (2, 6, 3);
        let mut rng = crate::tensor::Rng::new(3);
        let images = rng.normal_tensor([batch, 3, side, side], 1.0, DType::F64);
        let rows = patch_pixels(&images, patch).unwrap().to_f64_vec();
        let width = 3 * patch * patch;
        for (c, i, j) in [(0, 0, 0), (1, 2, 1), (2, 1, 2)] {
            let mut pick = vec![0.0; width];
            pick[c * patch * patch + i * patch + j] = 1.0;
            let weight = Tensor::from_f64(&pick, [1, 3, patch, patch], DType::F64).unwrap();
            let geo = crate::backend::Conv2dGeometry { stride: patch, padding: 0, groups: 1 };
            let conv = ops::conv2d(&images, &weight, geo).unwrap().to_f64_vec();
            for (k, value) in conv.iter().enumerate() {
                assert_eq!(*value, rows[k * width + c * patch * patch + i * patch + j]);
            }
        }
    }
}
