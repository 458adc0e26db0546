//! The text tower: token and positional embeddings, causal transformer blocks, EOT
//! pooling, ln_final, projection.

use super::builder::{Init, ModelSpec, Role};
use super::config::{InitStyle, ModelConfig};
use super::transformer::Block;
use super::vision::Head;
use crate::backend::AttnMask;
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::tensor::Tensor;
use crate::text::eot_positions;

#[derive(Debug, Clone)]
pub struct TextTower {
    token_embedding: ParamId,
    positional_embedding: ParamId,
    pub blocks: Vec<Block>,
    pub head: Head,
    context: usize,
    vocab: usize,
    width: usize,
}

impl TextTower {
    pub fn new(spec: &mut ModelSpec, config: &ModelConfig, blocks: Vec<Block>, head: Head) -> Self {
        let t = &config.text;
        let (token_std, pos_std) = match config.init {
            InitStyle::MsClip => (1.0, 0.02), // the reference leaves nn.Embedding at N(0, 1)
            InitStyle::OpenAiClip => (0.02, 0.01),
        };
        TextTower {
            token_embedding: spec.param(
                "token_embedding.weight",
                &[t.vocab, t.width],
                Init::Normal(token_std),
                Role::Text,
            ),
            positional_embedding: spec.param(
                "positional_embedding",
                &[t.context, t.width],
                Init::Normal(pos_std),
                Role::Text,
            ),
            blocks,
            head,
            context: t.context,
            vocab: t.vocab,
            width: t.width,
        }
    }

    /// Row-major [batch, context] token ids to L2-normalised features.
    pub fn forward(&self, p: &ParamStore, tokens: &[u32]) -> Result<Tensor> {
        let captions = self.embed(p, tokens)?;
        let mask = captions.mask();
        let mut x = captions.x;
        for block in &self.blocks {
            x = block.forward(p, &x, &mask)?;
        }
        self.head.forward(p, &self.pool(&x, &captions.pooled_rows)?)
    }

    /// The blocks' input: each caption's embedded tokens through its pooled token, packed.
    ///
    /// Pooling takes the first occurrence of the largest id in each row (EOT, the largest id
    /// of the vocabulary; a caption cut before its EOT pools at SOT, as in the reference).
    /// Under the causal mask nothing after that position can change it, so each caption is
    /// trimmed through its pooled token and the captions run packed back to back as one
    /// [1, total, width] sequence (varlen attention): exact, with no FLOPs spent on padding
    /// and one attention launch per layer whatever the mix of lengths.
    pub fn embed(&self, p: &ParamStore, tokens: &[u32]) -> Result<PackedCaptions> {
        if tokens.is_empty() || !tokens.len().is_multiple_of(self.context) {
            return Err(Error::shape(
                "encode_text",
                format!("{} token ids are not a whole number of rows of {}", tokens.len(), self.context),
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(Error::index("encode_text", format!("token id {bad} for a vocabulary of {}", self.vocab)));
        }
        let pooled_at = eot_positions(tokens, self.context)?;
        let (mut ids, mut positions, mut offsets, mut pooled_rows) = (Vec::new(), Vec::new(), vec![0], Vec::new());
        for (row, &last) in tokens.chunks(self.context).zip(&pooled_at) {
            ids.extend_from_slice(&row[..=last]);
            positions.extend(0..=last as u32);
            offsets.push(ids.len());
            // The pooled token is the last of its caption's packed sequence.
            pooled_rows.push(ids.len() as u32 - 1);
        }
        let total = ids.len();
        let tokens_in = p.get(self.token_embedding).index_rows(&ids)?;
        let x = tokens_in.add(&p.get(self.positional_embedding).index_rows(&positions)?)?;
        Ok(PackedCaptions { x: x.reshape([1, total, self.width])?, offsets, pooled_rows })
    }

    /// The pooled token of each caption, [captions, width], from the blocks' packed output.
    pub fn pool(&self, x: &Tensor, pooled_rows: &[u32]) -> Result<Tensor> {
        x.reshape([x.numel() / self.width, self.width])?.index_rows(pooled_rows)
    }
}

/// Captions trimmed through their pooled tokens and packed back to back.
pub struct PackedCaptions {
    /// [1, total tokens, width].
    pub x: Tensor,
    /// Cumulative offsets of the captions in `x`: [0, n_0, n_0 + n_1, ..., total].
    pub offsets: Vec<usize>,
    /// The row of each caption's pooled token in `x` (the last of its sequence).
    pub pooled_rows: Vec<u32>,
}

impl PackedCaptions {
    /// Causal attention within each caption.
    pub fn mask(&self) -> AttnMask {
        AttnMask::packed(self.offsets.clone(), true)
    }
}
