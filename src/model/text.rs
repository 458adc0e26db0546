//! The text tower: token and positional embeddings, transformer blocks (causal with EOT pooling
//! as in CLIP, or bidirectional pooled at the first token as in OneR), ln_final, projection.

use super::builder::{Init, ModelSpec, Role};
use super::config::{InitStyle, ModelConfig, TYPE_EMBEDDING_STD, TextEncoder};
use super::masked::MaskedCaptions;
use super::masked_heads::MlmHead;
use super::packing::{CaptionPacking, PackCapacity};
use super::transformer::{Block, Pooled};
use super::vision::Head;
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::tensor::{Table, Tensor};

#[derive(Debug, Clone)]
pub struct TextTower {
    token_embedding: ParamId,
    positional_embedding: ParamId,
    /// Added to every token ([`ModelConfig::type_embedding`]).
    type_embedding: Option<ParamId>,
    pub blocks: Vec<Block>,
    pub head: Head,
    /// Masked language modelling's head ([`ModelConfig::mlm_head`]).
    mlm: Option<MlmHead>,
    pub context: usize,
    vocab: usize,
    width: usize,
    encoder: TextEncoder,
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
            type_embedding: config
                .type_embedding
                .then(|| spec.param("type_embedding", &[t.width], Init::Normal(TYPE_EMBEDDING_STD), Role::Text)),
            blocks,
            head,
            mlm: config.mlm_head.then(|| MlmHead::new(spec, t.width, t.vocab, config.ln_eps, token_std)),
            context: t.context,
            vocab: t.vocab,
            width: t.width,
            encoder: t.encoder,
        }
    }

    /// Row-major [batch, context] token ids to L2-normalised features.
    pub fn forward(&self, p: &ParamStore, tokens: &[u32]) -> Result<Tensor> {
        self.forward_packed(p, &self.pack(tokens, None)?)
    }

    /// [`TextTower::forward`] on captions already packed.
    pub fn forward_packed(&self, p: &ParamStore, packing: &CaptionPacking) -> Result<Tensor> {
        let x = self.embed(p, packing)?;
        let mask = packing.mask();
        let Some((last, blocks)) = self.blocks.split_last() else {
            return self.head.forward(p, &self.pool(&x, &packing.pooled_rows)?);
        };
        let x = blocks.iter().try_fold(x, |x, block| block.forward(p, &x, &mask))?;
        // The last block computes only the pooled rows the head reads.
        let pooled = Pooled::Rows { rows: &packing.pooled_rows, split: 0 };
        self.head.forward(p, &last.forward_pooled(p, &x, &mask, pooled)?)
    }

    /// `tokens` packed for this tower (its context and vocabulary), padded to `capacity` if given.
    pub fn pack(&self, tokens: &[u32], capacity: Option<PackCapacity>) -> Result<CaptionPacking> {
        CaptionPacking::new(tokens, self.context, self.vocab, self.encoder, capacity)
    }

    /// The blocks' input: the packed tokens' embeddings plus their positions',
    /// [1, packed tokens, width].
    pub fn embed(&self, p: &ParamStore, packing: &CaptionPacking) -> Result<Tensor> {
        self.embed_from(p, packing, p.get(self.token_embedding))
    }

    /// [`TextTower::embed`] with the token embeddings looked up in `table`.
    fn embed_from(&self, p: &ParamStore, packing: &CaptionPacking, table: &Tensor) -> Result<Tensor> {
        if packing.context != self.context {
            return Err(Error::shape(
                "encode_text",
                format!("captions packed for a context of {}, the tower's is {}", packing.context, self.context),
            ));
        }
        let tokens_in = table.index_rows_by(&packing.ids)?;
        let x = tokens_in.add(&p.get(self.positional_embedding).index_rows_by(&packing.positions)?)?;
        let x = match self.type_embedding {
            Some(t) => x.add_broadcast(p.get(t))?,
            None => x,
        };
        x.reshape([1, packing.tokens(), self.width])
    }

    /// Masked language modelling's loss on `masked`: the masked copies through every block, the
    /// masked tokens' rows through the MLM head.
    pub fn mlm_loss(&self, p: &ParamStore, masked: &MaskedCaptions) -> Result<Tensor> {
        let head = self.mlm.as_ref().ok_or_else(|| {
            Error::config("--loss mlm needs the model's MLM head, which this model was built without (mlm_head)")
        })?;
        let tokens = p.get(self.token_embedding);
        let x = self.embed_from(p, &masked.packing, &head.token_table(p, tokens)?)?;
        let mask = masked.packing.mask();
        let x = self.blocks.iter().try_fold(x, |x, block| block.forward(p, &x, &mask))?;
        let rows = x.reshape([masked.packing.tokens(), self.width])?.index_rows_by(&masked.rows)?;
        head.loss(p, &rows, tokens, &masked.targets)
    }

    /// The pooled token of each caption, [captions, width], from the blocks' packed output.
    pub fn pool(&self, x: &Tensor, pooled_rows: &Table) -> Result<Tensor> {
        Pooled::Rows { rows: pooled_rows, split: 0 }.select(x)
    }
}
