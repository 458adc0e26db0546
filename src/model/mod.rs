//! The model family: CLIP, MS-CLIP (plain, with early specialisation, with the parallel
//! branch) and single-tower models, from one [`ModelConfig`].

mod builder;
mod config;
mod convnet;
mod count;
mod fused;
mod joint;
mod masked;
mod masked_heads;
mod objectives;
mod packing;
mod presets;
mod text;
mod transformer;
mod vision;

pub use builder::{BufferId, Buffers, Init, ModelSpec, ParamSpec, Role};
pub use config::{
    Activation, InitStyle, ModelConfig, ParallelBranch, Sharing, TextConfig, TextEncoder, VisionConfig, VisionStem,
};
pub use convnet::Mode;
pub use count::ParamCounts;
pub use fused::ModalityFusion;
pub use masked::{CaptionMasks, MaskCapacity, MaskDraw, MaskGeometry, MaskedInputs, PatchMasks};
pub use masked_heads::patch_pixels;
pub use objectives::{LossTerms, OBJECTIVES, Objectives, PairFeatures};
pub use packing::{CaptionPacking, PackCapacity, packed_tokens};
pub use presets::{PRESETS, preset};

use crate::dist::Negatives;
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::tensor::{DType, Rng, Tensor};
use joint::JointAttention;
use text::TextTower;
use transformer::{Block, BlockShape};
use vision::{Head, VisionTower};

/// What a training loss needs besides the model, the batch and the objectives.
#[derive(Default)]
pub struct LossContext<'a> {
    /// The cap on the logit scale inside the loss (training clamps the parameter instead).
    pub max_scale: Option<f64>,
    /// A momentum copy's parameters and buffers: the mixture targets come from its embeddings
    /// of the pairs, computed in its master dtype without a tape.
    pub momentum: Option<(&'a ParamStore, &'a mut Buffers)>,
    /// The step's masks, which MLM and MIM need.
    pub masked: Option<&'a MaskedInputs>,
    /// Where the contrasts find their negatives: this batch, or the global batch across ranks.
    pub negatives: Negatives,
}

/// A contrastive image-text model: two towers (which may share weights) and a logit scale.
/// Holds parameter ids only; values live in a [`ParamStore`], running statistics in
/// [`Buffers`].
#[derive(Debug)]
pub struct ClipModel {
    pub config: ModelConfig,
    pub spec: ModelSpec,
    vision: VisionTower,
    text: TextTower,
    logit_scale: ParamId,
    /// How `contrastive_loss` runs the towers.
    fusion: ModalityFusion,
}

impl ClipModel {
    /// Declares every parameter of `config` (no memory for values yet).
    pub fn new(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        let mut spec = ModelSpec::default();
        let (v, t) = (&config.vision, &config.text);
        let shape = |width, heads, depth| BlockShape {
            width,
            heads,
            depth,
            ln_eps: config.ln_eps,
            init: config.init,
            activation: config.activation,
        };
        let v_shape = shape(v.width, v.heads, v.layers);
        let t_shape = shape(t.width, t.heads, t.layers);

        // Whether text layer i uses visual layer i's weights.
        let shares_layer = |i: usize| config.sharing != Sharing::None && !(t.unshared_first_layer && i == 0);

        // Vision blocks first: shared weights are registered under their visual names.
        let vision_blocks: Vec<(usize, Block)> = (v.first_block()..v.layers)
            .map(|i| {
                let roles = match config.sharing {
                    Sharing::All if shares_layer(i) => (Role::Shared, Role::Shared),
                    Sharing::AttnMlp if shares_layer(i) => (Role::Vision, Role::Shared),
                    _ => (Role::Vision, Role::Vision),
                };
                (i, Block::new(&mut spec, &format!("visual.transformer.resblocks.{i}"), v_shape, roles))
            })
            .collect();

        let text_blocks: Vec<Block> = (0..t.layers)
            .map(|i| {
                let name = format!("transformer.resblocks.{i}");
                let partner = vision_blocks.iter().find(|(layer, _)| *layer == i).map(|(_, b)| b);
                match (partner, config.sharing) {
                    (Some(b), Sharing::All) if shares_layer(i) => *b,
                    (Some(b), Sharing::AttnMlp) if shares_layer(i) => {
                        Block::sharing_weights_of(b, &mut spec, &name, t_shape, Role::Text)
                    }
                    _ => Block::new(&mut spec, &name, t_shape, (Role::Text, Role::Text)),
                }
            })
            .collect();

        let v_scale = (v.width as f64).powf(-0.5);
        let (vision_head, text_head) = if config.sharing == Sharing::All {
            let head = Head::new(&mut spec, ("head.ln", "head.proj"), v.width, &config, v_scale, Role::Shared);
            (head, head)
        } else {
            let text_std = match config.init {
                InitStyle::MsClip => 0.02,
                InitStyle::OpenAiClip => (t.width as f64).powf(-0.5),
            };
            (
                Head::new(&mut spec, ("visual.ln_post", "visual.proj"), v.width, &config, v_scale, Role::Vision),
                Head::new(&mut spec, ("ln_final", "text_projection"), t.width, &config, text_std, Role::Text),
            )
        };
        let vision = VisionTower::new(&mut spec, &config, vision_blocks, vision_head);
        let text = TextTower::new(&mut spec, &config, text_blocks, text_head);
        let logit_scale = spec.param("logit_scale", &[1], Init::Constant(config.logit_scale_init), Role::Joint);
        let fusion = ModalityFusion::default_for(&config);
        Ok(ClipModel { config, spec, vision, text, logit_scale, fusion })
    }

    /// The model with `contrastive_loss` running its towers as `fusion` says.
    pub fn with_fusion(self, fusion: ModalityFusion) -> Self {
        ClipModel { fusion, ..self }
    }

    pub fn fusion(&self) -> ModalityFusion {
        self.fusion
    }

    /// Parameter values drawn from `rng`, and fresh running statistics.
    pub fn init_params(&self, rng: &mut Rng, dtype: DType) -> Result<(ParamStore, Buffers)> {
        self.spec.materialize(rng, dtype)
    }

    pub fn counts(&self) -> ParamCounts {
        ParamCounts::of(&self.spec)
    }

    pub fn logit_scale(&self) -> ParamId {
        self.logit_scale
    }

    /// [batch, 3, size, size] normalised images to L2-normalised [batch, embed_dim] features.
    pub fn encode_image(&self, p: &ParamStore, bufs: &mut Buffers, images: &Tensor, mode: Mode) -> Result<Tensor> {
        self.vision.forward(p, bufs, images, mode)
    }

    /// L2-normalised [batch, grid^2, embed_dim] patch embeddings: the last block's patch tokens
    /// through the image head (the shared head for a single tower), for zero-shot localisation.
    pub fn encode_patches(&self, p: &ParamStore, bufs: &mut Buffers, images: &Tensor, mode: Mode) -> Result<Tensor> {
        self.vision.forward_patches(p, bufs, images, mode)
    }

    /// Row-major [batch, context] token ids to L2-normalised [batch, embed_dim] features.
    pub fn encode_text(&self, p: &ParamStore, tokens: &[u32]) -> Result<Tensor> {
        self.text.forward(p, tokens)
    }

    /// Row-major [batch, context] token ids packed for the text tower, padded to `capacity`
    /// when given (for a captured graph).
    pub fn pack_captions(&self, tokens: &[u32], capacity: Option<PackCapacity>) -> Result<CaptionPacking> {
        self.text.pack(tokens, capacity)
    }

    /// The symmetric InfoNCE loss of a batch of matching pairs; `max_scale` clamps
    /// exp(logit_scale) (open_clip uses 100). The towers run as [`ClipModel::fusion`] says.
    pub fn contrastive_loss(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        tokens: &[u32],
        max_scale: Option<f64>,
    ) -> Result<Tensor> {
        self.contrastive_loss_packed(p, bufs, images, &self.pack_captions(tokens, None)?, max_scale)
    }

    /// [`ClipModel::contrastive_loss`] on captions already packed.
    pub fn contrastive_loss_packed(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        captions: &CaptionPacking,
        max_scale: Option<f64>,
    ) -> Result<Tensor> {
        self.training_loss_packed(p, bufs, images, captions, &Objectives::default(), max_scale)
    }

    /// The weighted `objectives` of a batch of matching pairs (captions packed); CLIP's
    /// contrast alone is [`ClipModel::contrastive_loss_packed`].
    pub fn training_loss_packed(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        captions: &CaptionPacking,
        objectives: &Objectives,
        max_scale: Option<f64>,
    ) -> Result<Tensor> {
        let context = LossContext { max_scale, ..LossContext::default() };
        Ok(self.training_loss_terms(p, bufs, images, captions, objectives, context)?.total)
    }

    /// [`ClipModel::training_loss_packed`] with each objective's value beside it, computed as
    /// `context` says (a momentum copy's targets, the step's masks, negatives across ranks).
    pub fn training_loss_terms(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        captions: &CaptionPacking,
        objectives: &Objectives,
        context: LossContext<'_>,
    ) -> Result<LossTerms> {
        let LossContext { max_scale, momentum, masked, negatives } = context;
        let (img, txt) = self.encode_pairs(p, bufs, images, captions)?;
        let mixture_from = match momentum.filter(|_| objectives.uses_mixture()) {
            Some((ema, ema_bufs)) => {
                let images = images.to_dtype(ema.get(self.logit_scale).dtype())?;
                Some(crate::autograd::no_grad(|| self.encode_pairs(ema, ema_bufs, &images, captions))?)
            }
            None => None,
        };
        let mut joint = |needed: bool, attention| match needed {
            true => joint::encode_joint(self, p, bufs, images, captions, attention).map(Some),
            false => Ok(None),
        };
        let full = joint(objectives.needs_joint(), JointAttention::Full)?;
        let contextual = joint(objectives.needs_contextual(), JointAttention::Cross)?;
        // The loss runs in the logit scale's dtype (fp32 when the towers compute in bf16).
        let scale = p.get(self.logit_scale);
        let mlm = match masked.and_then(|m| m.captions.as_ref()).filter(|_| objectives.mlm > 0.0) {
            Some(captions) => Some(self.text.mlm_loss(p, captions)?.to_dtype(scale.dtype())?),
            None => None,
        };
        let mim = match masked.and_then(|m| m.patches.as_ref()).filter(|_| objectives.mim > 0.0) {
            Some(patches) => {
                Some(self.vision.mim_loss(p, bufs, images, patches, Mode::Train)?.to_dtype(scale.dtype())?)
            }
            None => None,
        };
        let features = PairFeatures {
            img: img.to_dtype(scale.dtype())?,
            txt: txt.to_dtype(scale.dtype())?,
            mixture_from: mixture_from
                .map(|(i, t)| Ok::<_, crate::Error>((i.to_dtype(scale.dtype())?, t.to_dtype(scale.dtype())?)))
                .transpose()?,
            joint: full.map(|j| j.to_dtype(scale.dtype())).transpose()?,
            contextual: contextual.map(|c| c.to_dtype(scale.dtype())).transpose()?,
            mlm,
            mim,
        };
        objectives.loss_terms(&features, scale, max_scale, &negatives)
    }

    /// The shapes the masked-modelling tables are made for.
    pub fn mask_geometry(&self) -> MaskGeometry {
        let (t, grid) = (&self.config.text, self.config.vision.grid());
        MaskGeometry { context: t.context, vocab: t.vocab, encoder: t.encoder, patches_per_image: grid * grid }
    }

    /// The L2-normalised image and text embeddings of a batch of pairs, in training mode, the
    /// modalities fused or in two passes as the model runs them.
    pub(crate) fn encode_pairs(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        captions: &CaptionPacking,
    ) -> Result<(Tensor, Tensor)> {
        match self.fusion {
            ModalityFusion::Fused => fused::encode_fused(self, p, bufs, images, captions, Mode::Train),
            ModalityFusion::TwoPass => {
                Ok((self.encode_image(p, bufs, images, Mode::Train)?, self.text.forward_packed(p, captions)?))
            }
        }
    }
}
