//! The pre-norm transformer block of CLIP and MS-CLIP, and its parts.

use super::builder::{Init, ModelSpec, Role};
use super::config::InitStyle;
use crate::backend::AttnMask;
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

/// LayerNorm over the last dimension with its own weight and bias.
#[derive(Debug, Clone, Copy)]
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
        x.layer_norm(p.get(self.weight), p.get(self.bias), self.eps)
    }

    /// `(x + residual, LayerNorm(x + residual))` in one fused op.
    pub fn forward_residual(&self, p: &ParamStore, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        x.add_layer_norm(residual, p.get(self.weight), p.get(self.bias), self.eps)
    }
}

/// `x W^T + b` with a PyTorch-layout [out, in] weight.
#[derive(Debug, Clone, Copy)]
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
#[derive(Debug, Clone, Copy)]
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
        let attn = self.weights.attention(p, &self.ln_1.forward(p, x)?, mask)?;
        let (x, h) = self.ln_2.forward_residual(p, &attn, x)?;
        x.add(&self.weights.mlp(p, &h)?)
    }
}
