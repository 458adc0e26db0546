//! One configuration spans the design space of the papers: CLIP's two towers, MS-CLIP's
//! shared transformer (with or without early specialisation and the parallel branch) and a
//! single tower with one head. `reference/msclip-architecture.md` is the specification.

use serde::{Deserialize, Serialize};

pub use crate::backend::Activation;
use crate::data::PixelStats;
use crate::error::{Error, Result};
use crate::text::Truncation;

/// What the image and text transformers share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// CLIP: two separate towers.
    None,
    /// MS-CLIP: QKV, attention out-projection and MLP weights shared; LayerNorms,
    /// embeddings and projections per modality.
    #[serde(rename = "attn+mlp")]
    AttnMlp,
    /// A single tower with one head: every block weight including the LayerNorms, the final
    /// LayerNorm and the projection are shared; only the input embeddings differ (OneR).
    All,
}

/// Initialisation recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitStyle {
    /// OpenAI CLIP's `initialize_parameters`: width-scaled normals, token embedding std 0.02.
    OpenAiClip,
    /// The MS-CLIP code: trunc-normal(0.02) for linears and convs, xavier-uniform in_proj,
    /// token embedding N(0, 1).
    MsClip,
}

/// How images become tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VisionStem {
    /// One conv with kernel = stride = patch size, no bias (ViT patchify).
    Patchify { patch: usize },
    /// MS-CLIP's early-specialisation residual conv stem, which takes the place of visual
    /// layer 0: conv3x3/2 (3 -> channels[0]) + BN + ReLU, then one residual basic block per
    /// `strides` entry (channels[i] -> channels[i + 1]), then a 1x1 conv to the width.
    ConvStem { channels: Vec<usize>, strides: Vec<usize> },
}

/// The vision-only parallel conv branch with lateral adapters into the trunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParallelBranch {
    /// Output channels of stage 0 (a conv3x3/stride + BN + ReLU) and stages 1.. (bottleneck
    /// residual blocks).
    pub channels: Vec<usize>,
    /// Stride of each stage.
    pub strides: Vec<usize>,
    /// Trunk block index before which each stage's adapter is fused in, in stage order; several
    /// stages may fuse before one block (a shallow tower), one after another.
    pub lateral_layers: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub image_size: usize,
    pub width: usize,
    /// Transformer layers, counting the conv stem as layer 0 when it replaces one.
    pub layers: usize,
    pub heads: usize,
    pub stem: VisionStem,
    pub parallel_branch: Option<ParallelBranch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextConfig {
    pub context: usize,
    pub vocab: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// Early specialisation for text: layer 0 is a full, unshared block.
    pub unshared_first_layer: bool,
    /// How tokens see each other and which one the head reads (configs from before the choice
    /// are CLIP's).
    #[serde(default)]
    pub encoder: TextEncoder,
    /// How a caption longer than the context is cut: EOT forced into the last slot for the CLIP
    /// presets (OpenAI's and open_clip's tokenizers), the reference's cut for MS-CLIP's.
    #[serde(default)]
    pub truncation: Truncation,
}

/// The text tower's attention pattern and pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextEncoder {
    /// CLIP's: causal attention, the head reads the EOT token.
    #[default]
    Causal,
    /// OneR's (BERT-style): each caption's tokens attend to all of its tokens (never to padding
    /// or to other captions), and the head reads its first token, SOT, as the [CLS] token.
    Bidirectional,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub embed_dim: usize,
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub sharing: Sharing,
    pub init: InitStyle,
    /// The transformer MLPs' activation: QuickGELU (OpenAI CLIP, MS-CLIP; configs from before
    /// the choice) or the exact GELU (open_clip's plain ViT-B-32 / ViT-B-16).
    #[serde(default)]
    pub activation: Activation,
    /// The statistics images are normalised with: CLIP's, or ImageNet's for the B-scale
    /// MS-CLIP presets (as MS-CLIP's zero-shot evaluation normalises).
    #[serde(default)]
    pub pixel_stats: PixelStats,
    /// LayerNorm eps: 1e-12 in MS-CLIP, 1e-5 in CLIP.
    pub ln_eps: f64,
    /// BatchNorm eps of the stem, branch stage 0 and adapters (1e-5), and of the branch's
    /// bottleneck blocks (1e-6 in MS-CLIP).
    pub bn_eps: f64,
    pub bn_eps_branch_blocks: f64,
    /// Initial logit scale (log of the temperature multiplier): 1.0 in MS-CLIP, ln(1/0.07) in CLIP.
    pub logit_scale_init: f64,
    /// A learned modality-type vector added to every token of each modality (`visual.type_embedding`,
    /// `type_embedding`), as ViLT and M3AE give their one towers; an option for OneR, whose use
    /// of it is not confirmed (oner-notes.md section 4). Off in every preset.
    #[serde(default)]
    pub type_embedding: bool,
    /// A masked-language-modelling head and the [MASK] embedding (`mlm.*`), for OneR's MLM
    /// objective; needs the bidirectional text encoder. Off in every preset: a run training
    /// with `--loss mlm=..` turns it on.
    #[serde(default)]
    pub mlm_head: bool,
    /// A pixel-regression head and the patch mask token (`visual.mim.*`), for OneR's MIM
    /// objective; needs a patchify stem and no parallel branch (a convolution over the whole image
    /// would see the masked pixels). Off in every preset, as `mlm_head`.
    #[serde(default)]
    pub mim_head: bool,
}

/// The initial std of a modality-type embedding: 0.02, as ViT-style one towers (ViLT, M3AE)
/// initialise theirs.
pub(super) const TYPE_EMBEDDING_STD: f64 = 0.02;

impl VisionConfig {
    /// Side of the token grid after the stem.
    pub fn grid(&self) -> usize {
        self.image_size / self.total_stride()
    }

    /// Tokens per image, CLS included.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    fn total_stride(&self) -> usize {
        match &self.stem {
            VisionStem::Patchify { patch } => *patch,
            VisionStem::ConvStem { strides, .. } => 2 * strides.iter().product::<usize>(),
        }
    }

    /// Index of the first transformer block: the conv stem takes the place of block 0.
    pub fn first_block(&self) -> usize {
        match self.stem {
            VisionStem::Patchify { .. } => 0,
            VisionStem::ConvStem { .. } => 1,
        }
    }
}

impl ModelConfig {
    /// This configuration with `layers` transformer layers in each tower (a quick, shallow model
    /// of a preset's shapes, as `--layers` asks). The parallel branch keeps every stage, each
    /// fused in before the block at the same relative depth as in the full tower (rounded
    /// down), so a shallow tower may take several stages before one block.
    pub fn with_depth(mut self, layers: usize) -> Result<Self> {
        let (full, first) = (self.vision.layers, self.vision.first_block());
        if let Some(branch) = &mut self.vision.parallel_branch
            && full > first
            && layers > first
        {
            for lateral in &mut branch.lateral_layers {
                *lateral = first + lateral.saturating_sub(first) * (layers - first) / (full - first);
            }
        }
        self.vision.layers = layers;
        self.text.layers = layers;
        self.validate()?;
        Ok(self)
    }

    /// Rejects configurations that cannot be built, with the reason.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let fail = |msg: String| Err(Error::config(format!("{}: {msg}", self.name)));
        for (tower, width, heads) in [("vision", v.width, v.heads), ("text", t.width, t.heads)] {
            if heads == 0 || width % heads != 0 {
                return fail(format!("{tower} width {width} is not divisible by {heads} heads"));
            }
        }
        if self.sharing != Sharing::None && (v.width != t.width || v.heads != t.heads) {
            return fail(format!(
                "shared weights need equal widths and heads: vision {}x{}, text {}x{}",
                v.width, v.heads, t.width, t.heads
            ));
        }
        if self.sharing != Sharing::None && v.layers != t.layers {
            return fail(format!("shared towers need equal depths: vision {}, text {}", v.layers, t.layers));
        }
        if self.sharing != Sharing::None && v.first_block() > 0 && !t.unshared_first_layer {
            return fail("with a conv stem as visual layer 0, text layer 0 has no partner: make it unshared".into());
        }
        if v.layers <= v.first_block() || t.layers == 0 {
            return fail("each tower needs at least one transformer block".into());
        }
        if t.context < 2 || t.vocab < 3 {
            return fail(format!("text context {} and vocab {} are too small", t.context, t.vocab));
        }
        if self.embed_dim == 0 {
            return fail("embed_dim must be positive".into());
        }
        if v.total_stride() == 0 || !v.image_size.is_multiple_of(v.total_stride()) || v.grid() == 0 {
            return fail(format!(
                "image size {} is not a multiple of the stem stride {}",
                v.image_size,
                v.total_stride()
            ));
        }
        if self.mlm_head && t.encoder != TextEncoder::Bidirectional {
            return fail(
                "masked language modelling needs the bidirectional text encoder (a causal token never sees \
                 the words after it): use a single-tower preset (tiny-oner, oner-b32, oner-b16)"
                    .into(),
            );
        }
        if self.mim_head && (!matches!(v.stem, VisionStem::Patchify { .. }) || v.parallel_branch.is_some()) {
            return fail(
                "masked image modelling needs a patchify stem and no parallel branch (a convolution over the \
                 image would see the masked patches): use tiny-oner, tiny-clip, tiny-msclip or a B/32, B/16 \
                 preset without a conv stem"
                    .into(),
            );
        }
        if let VisionStem::ConvStem { channels, strides } = &v.stem
            && (channels.is_empty() || channels.len() != strides.len() + 1)
        {
            return fail("conv stem needs one more channel entry than strides".into());
        }
        if let Some(pb) = &v.parallel_branch {
            if pb.channels.len() != pb.strides.len() || pb.channels.len() != pb.lateral_layers.len() {
                return fail("parallel branch needs one channel count, stride and lateral layer per stage".into());
            }
            let mut side = v.image_size;
            for (k, (&s, &layer)) in pb.strides.iter().zip(&pb.lateral_layers).enumerate() {
                side = side.div_ceil(s);
                if s == 0 || !side.is_multiple_of(v.grid()) {
                    return fail(format!(
                        "parallel stage {k} output {side} px does not reduce to the {} grid",
                        v.grid()
                    ));
                }
                if layer < v.first_block() || layer >= v.layers {
                    return fail(format!("lateral layer {layer} is not a transformer block"));
                }
            }
            if pb.lateral_layers.windows(2).any(|w| w[1] < w[0]) {
                return fail(format!(
                    "lateral layers {:?} must not decrease: the stages run in order",
                    pb.lateral_layers
                ));
            }
            if pb.channels.iter().skip(1).any(|c| !c.is_multiple_of(2)) {
                return fail("parallel branch bottleneck channels must be even".into());
            }
        }
        Ok(())
    }
}
