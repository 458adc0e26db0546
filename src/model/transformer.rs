//! The pre-norm transformer block of CLIP and MS-CLIP, and its parts.

use super::builder::{Init, ModelSpec, Role};
use super::config::InitStyle;
use crate::backend::{AttnMask, LnAffine};
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

/// LayerNorm over the last dimension with its own weight and bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNorm {
    weight: ParamId,
    bias: ParamId,
    eps: f64,
}

impl LayerNorm {
    pub fn new(spec: &mut ModelSpec, name: &str, dim: usize, eps: f64, role: Role) -> Self {
        LayerNorm {
            weight: spec.param(format!("{name}.weight"), &[dim], Init::Ones, role),
            bias: spec.param(format!("{name}.bias"), &[dim], Init::Zeros, role),
            eps,
        }
    }

    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        RowNorms::one(*self).forward(p, x)
    }
}

/// The LayerNorm of each row of a block's input: one for all rows, or, in a modality-fused
/// layer, the image block's for the image rows and the text block's for the text rows after
/// them, in one op.
#[derive(Debug, Clone, Copy)]
struct RowNorms {
    first: LayerNorm,
    /// The LayerNorm of the rows from the given row on.
    second: Option<(LayerNorm, usize)>,
}

impl RowNorms {
    fn one(norm: LayerNorm) -> Self {
        RowNorms { first: norm, second: None }
    }

    /// `first` for rows before `split`, `second` from it on. One LayerNorm for all rows when
    /// they are the same (a single tower shares its LayerNorms too).
    fn split(first: LayerNorm, second: LayerNorm, split: usize) -> Self {
        RowNorms { first, second: (second != first).then_some((second, split)) }
    }

    fn affine(&self, p: &ParamStore) -> LnAffine {
        let affine = LnAffine::new(p.get(self.first.weight), p.get(self.first.bias));
        match self.second {
            Some((norm, split)) => affine.with_second(split, p.get(norm.weight), p.get(norm.bias)),
            None => affine,
        }
    }

    fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        x.layer_norm_segments(&self.affine(p), self.first.eps)
    }

    /// `(x + residual, LayerNorm(x + residual))` in one fused op.
    fn forward_residual(&self, p: &ParamStore, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        x.add_layer_norm_segments(residual, &self.affine(p), self.first.eps)
    }
}

/// `x W^T + b` with a PyTorch-layout [out, in] weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linear {
    weight: ParamId,
    bias: ParamId,
}

impl Linear {
    pub fn new(spec: &mut ModelSpec, name: &str, (inp, out): (usize, usize), weight_init: Init, role: Role) -> Self {
        Linear {
            weight: spec.param(format!("{name}.weight"), &[out, inp], weight_init, role),
            bias: spec.param(format!("{name}.bias"), &[out], Init::Zeros, role),
        }
    }

    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        x.linear(p.get(self.weight), Some(p.get(self.bias)))
    }

    /// `quick_gelu(forward(x))`, with the bias added inside the activation: one fused kernel on
    /// the GPU, since cuBLASLt has no QuickGELU epilogue to fuse it into the product.
    pub fn forward_quick_gelu(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        x.linear(p.get(self.weight), None)?.bias_quick_gelu(p.get(self.bias))
    }
}

/// The weights a block's sublayers may share across modalities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnMlp {
    in_proj_weight: ParamId,
    in_proj_bias: ParamId,
    out_proj: Linear,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl AttnMlp {
    fn new(
        spec: &mut ModelSpec,
        name: &str,
        width: usize,
        heads: usize,
        depth: usize,
        style: InitStyle,
        role: Role,
    ) -> Self {
        let inits = BlockInits::new(style, width, depth);
        AttnMlp {
            in_proj_weight: spec.param(format!("{name}.attn.in_proj_weight"), &[3 * width, width], inits.in_proj, role),
            in_proj_bias: spec.param(format!("{name}.attn.in_proj_bias"), &[3 * width], Init::Zeros, role),
            out_proj: Linear::new(spec, &format!("{name}.attn.out_proj"), (width, width), inits.out_proj, role),
            c_fc: Linear::new(spec, &format!("{name}.mlp.c_fc"), (width, 4 * width), inits.c_fc, role),
            c_proj: Linear::new(spec, &format!("{name}.mlp.c_proj"), (4 * width, width), inits.c_proj, role),
            heads,
        }
    }

    fn attention(&self, p: &ParamStore, h: &Tensor, mask: &AttnMask) -> Result<Tensor> {
        let qkv = h.linear(p.get(self.in_proj_weight), Some(p.get(self.in_proj_bias)))?;
        self.out_proj.forward(p, &ops::attention(&qkv, self.heads, mask)?)
    }

    fn mlp(&self, p: &ParamStore, h: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(p, &self.c_fc.forward_quick_gelu(p, h)?)
    }
}

/// Weight init of a block's linears.
struct BlockInits {
    in_proj: Init,
    out_proj: Init,
    c_fc: Init,
    c_proj: Init,
}

impl BlockInits {
    fn new(style: InitStyle, width: usize, depth: usize) -> Self {
        let w = width as f64;
        match style {
            // MS-CLIP: trunc_normal(0.02) everywhere (timm's +-2 bounds make it a plain normal),
            // xavier-uniform in_proj (a bare Parameter the re-init does not touch).
            InitStyle::MsClip => BlockInits {
                in_proj: Init::Uniform((6.0 / (w + 3.0 * w)).sqrt()),
                out_proj: Init::Normal(0.02),
                c_fc: Init::Normal(0.02),
                c_proj: Init::Normal(0.02),
            },
            // OpenAI CLIP's initialize_parameters (applied here to both towers).
            InitStyle::OpenAiClip => {
                let proj_std = w.powf(-0.5) * (2.0 * depth as f64).powf(-0.5);
                BlockInits {
                    in_proj: Init::Normal(w.powf(-0.5)),
                    out_proj: Init::Normal(proj_std),
                    c_fc: Init::Normal((2.0 * w).powf(-0.5)),
                    c_proj: Init::Normal(proj_std),
                }
            }
        }
    }
}

/// Pre-norm residual block: `x + Attn(LN1(x))`, then `+ MLP(LN2(.))`.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    ln_1: LayerNorm,
    ln_2: LayerNorm,
    weights: AttnMlp,
}

/// Dimensions and init of the blocks of one transformer.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub width: usize,
    pub heads: usize,
    pub depth: usize,
    pub ln_eps: f64,
    pub init: InitStyle,
}

impl Block {
    /// A block with weights of its own, registered under `name`; its LayerNorms and its
    /// attention/MLP weights carry their own roles (MS-CLIP shares only the latter).
    pub fn new(spec: &mut ModelSpec, name: &str, shape: BlockShape, (ln_role, weight_role): (Role, Role)) -> Self {
        Block {
            ln_1: LayerNorm::new(spec, &format!("{name}.ln_1"), shape.width, shape.ln_eps, ln_role),
            weights: AttnMlp::new(spec, name, shape.width, shape.heads, shape.depth, shape.init, weight_role),
            ln_2: LayerNorm::new(spec, &format!("{name}.ln_2"), shape.width, shape.ln_eps, ln_role),
        }
    }

    /// A block that uses `other`'s attention and MLP weights with LayerNorms of its own
    /// (MS-CLIP's modality-shared layer).
    pub fn sharing_weights_of(other: &Block, spec: &mut ModelSpec, name: &str, shape: BlockShape, role: Role) -> Self {
        Block {
            ln_1: LayerNorm::new(spec, &format!("{name}.ln_1"), shape.width, shape.ln_eps, role),
            weights: other.weights,
            ln_2: LayerNorm::new(spec, &format!("{name}.ln_2"), shape.width, shape.ln_eps, role),
        }
    }

    /// `x` is [batch, tokens, width].
    pub fn forward(&self, p: &ParamStore, x: &Tensor, mask: &AttnMask) -> Result<Tensor> {
        self.forward_rows(p, x, mask, (RowNorms::one(self.ln_1), RowNorms::one(self.ln_2)))
    }

    /// Whether `other` runs the same attention and MLP weights (a modality-shared layer).
    pub fn shares_weights_with(&self, other: &Block) -> bool {
        self.weights == other.weights
    }

    /// Modality-fused execution of a shared layer: `x` is [1, image rows + text rows, width],
    /// the rows of `image` (this block) before `split` and those of `text` from it on, which
    /// must share this block's weights. Each modality keeps its LayerNorms (one launch over
    /// both segments); the QKV, out-projection and MLP products run once over all rows; `mask`
    /// packs the image sequences (full attention) before the captions (causal).
    pub fn forward_fused(
        &self,
        text: &Block,
        p: &ParamStore,
        x: &Tensor,
        split: usize,
        mask: &AttnMask,
    ) -> Result<Tensor> {
        if !self.shares_weights_with(text) {
            return Err(Error::invalid("fused block", "the image and text blocks do not share their weights"));
        }
        let norms = (RowNorms::split(self.ln_1, text.ln_1, split), RowNorms::split(self.ln_2, text.ln_2, split));
        self.forward_rows(p, x, mask, norms)
    }

    fn forward_rows(
        &self,
        p: &ParamStore,
        x: &Tensor,
        mask: &AttnMask,
        (ln_1, ln_2): (RowNorms, RowNorms),
    ) -> Result<Tensor> {
        let attn = self.weights.attention(p, &ln_1.forward(p, x)?, mask)?;
        let (x, h) = ln_2.forward_residual(p, &attn, x)?;
        x.add(&self.weights.mlp(p, &h)?)
    }
}
