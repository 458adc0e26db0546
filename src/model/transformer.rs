//! The pre-norm transformer block of CLIP and MS-CLIP, and its parts.

use super::builder::{Init, ModelSpec, Role};
use super::config::InitStyle;
use crate::backend::{Activation, AttnMask, LnAffine};
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::ops;
use crate::tensor::{Table, Tensor};

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

    /// The same norms over the rows a block's output keeps: the second segment now starts at
    /// row `split` of them.
    fn over_kept_rows(self, split: usize) -> Self {
        RowNorms { second: self.second.map(|(norm, _)| (norm, split)), ..self }
    }
}

/// The rows of a last block's output that the heads read, when only those are wanted.
#[derive(Debug, Clone, Copy)]
pub enum Pooled<'a> {
    /// Token 0 of each sequence of a [batch, tokens, width] input (the images' CLS tokens).
    FirstToken,
    /// These rows of the [rows, width] view of the input, of which the first `split` belong
    /// to the first LayerNorm segment (the image rows of a modality-fused layer).
    Rows { rows: &'a Table, split: usize },
}

impl Pooled<'_> {
    /// The kept rows of `x` ([batch, tokens, width] or [1, rows, width]) as [kept, width].
    pub(super) fn select(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.dims()[x.dims().len() - 1];
        match self {
            Pooled::FirstToken => x.slice(1, 0, 1)?.reshape([x.dims()[0], width]),
            Pooled::Rows { rows, .. } => x.reshape([x.numel() / width, width])?.index_rows_by(rows),
        }
    }

    fn norms(&self, norms: RowNorms) -> RowNorms {
        match self {
            Pooled::FirstToken => norms,
            Pooled::Rows { split, .. } => norms.over_kept_rows(*split),
        }
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

    /// `act(forward(x))`, with the bias added inside the activation: one fused kernel on the
    /// GPU, since cuBLASLt has no QuickGELU epilogue to fuse it into the product.
    pub fn forward_activation(&self, p: &ParamStore, x: &Tensor, act: Activation) -> Result<Tensor> {
        x.linear(p.get(self.weight), None)?.bias_activation(p.get(self.bias), act)
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
    /// The MLP's activation.
    activation: Activation,
}

impl AttnMlp {
    fn new(spec: &mut ModelSpec, name: &str, shape: BlockShape, role: Role) -> Self {
        let BlockShape { width, heads, depth, init, activation, .. } = shape;
        let inits = BlockInits::new(init, width, depth);
        AttnMlp {
            in_proj_weight: spec.param(format!("{name}.attn.in_proj_weight"), &[3 * width, width], inits.in_proj, role),
            in_proj_bias: spec.param(format!("{name}.attn.in_proj_bias"), &[3 * width], Init::Zeros, role),
            out_proj: Linear::new(spec, &format!("{name}.attn.out_proj"), (width, width), inits.out_proj, role),
            c_fc: Linear::new(spec, &format!("{name}.mlp.c_fc"), (width, 4 * width), inits.c_fc, role),
            c_proj: Linear::new(spec, &format!("{name}.mlp.c_proj"), (4 * width, width), inits.c_proj, role),
            heads,
            activation,
        }
    }

    /// Attention over all rows of `h`; the out-projection only over the rows `pooled` keeps,
    /// when given.
    fn attention(&self, p: &ParamStore, h: &Tensor, mask: &AttnMask, pooled: Option<Pooled>) -> Result<Tensor> {
        let qkv = h.linear(p.get(self.in_proj_weight), Some(p.get(self.in_proj_bias)))?;
        let heads_out = ops::attention(&qkv, self.heads, mask)?;
        let heads_out = match pooled {
            Some(pooled) => pooled.select(&heads_out)?,
            None => heads_out,
        };
        self.out_proj.forward(p, &heads_out)
    }

    fn mlp(&self, p: &ParamStore, h: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(p, &self.c_fc.forward_activation(p, h, self.activation)?)
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

/// Dimensions, init and MLP activation of the blocks of one transformer.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub width: usize,
    pub heads: usize,
    pub depth: usize,
    pub ln_eps: f64,
    pub init: InitStyle,
    pub activation: Activation,
}

impl Block {
    /// A block with weights of its own, registered under `name`; its LayerNorms and its
    /// attention/MLP weights carry their own roles (MS-CLIP shares only the latter).
    pub fn new(spec: &mut ModelSpec, name: &str, shape: BlockShape, (ln_role, weight_role): (Role, Role)) -> Self {
        Block {
            ln_1: LayerNorm::new(spec, &format!("{name}.ln_1"), shape.width, shape.ln_eps, ln_role),
            weights: AttnMlp::new(spec, name, shape, weight_role),
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
        self.forward_rows(p, x, mask, (RowNorms::one(self.ln_1), RowNorms::one(self.ln_2)), None)
    }

    /// [`Block::forward`] as a tower's last block: only the rows `pooled` keeps, [kept, width],
    /// the same values (each token's attention still sees all keys) without the
    /// out-projection, MLP and second LayerNorm of the rows no head reads.
    pub fn forward_pooled(&self, p: &ParamStore, x: &Tensor, mask: &AttnMask, pooled: Pooled) -> Result<Tensor> {
        self.forward_rows(p, x, mask, (RowNorms::one(self.ln_1), RowNorms::one(self.ln_2)), Some(pooled))
    }

    /// Whether `other` runs the same attention and MLP weights (a modality-shared layer).
    pub fn shares_weights_with(&self, other: &Block) -> bool {
        self.weights == other.weights
    }

    /// Modality-fused execution of a shared layer: `x` is [1, image rows + text rows, width],
    /// the rows of `image` (this block) before `split` and those of `text` from it on, which
    /// must share this block's weights. Each modality keeps its LayerNorms (one launch over
    /// both segments); the QKV, out-projection and MLP products run once over all rows; `mask`
    /// packs the image sequences (full attention) before the captions (causal). With `pooled`,
    /// only those rows of the output, as in [`Block::forward_pooled`].
    pub fn forward_fused(
        &self,
        text: &Block,
        p: &ParamStore,
        x: &Tensor,
        split: usize,
        mask: &AttnMask,
        pooled: Option<Pooled>,
    ) -> Result<Tensor> {
        if !self.shares_weights_with(text) {
            return Err(Error::invalid("fused block", "the image and text blocks do not share their weights"));
        }
        let norms = (RowNorms::split(self.ln_1, text.ln_1, split), RowNorms::split(self.ln_2, text.ln_2, split));
        self.forward_rows(p, x, mask, norms, pooled)
    }

    fn forward_rows(
        &self,
        p: &ParamStore,
        x: &Tensor,
        mask: &AttnMask,
        (ln_1, ln_2): (RowNorms, RowNorms),
        pooled: Option<Pooled>,
    ) -> Result<Tensor> {
        let attn = self.weights.attention(p, &ln_1.forward(p, x)?, mask, pooled)?;
        let (x, h) = match pooled {
            Some(pooled) => pooled.norms(ln_2).forward_residual(p, &attn, &pooled.select(x)?)?,
            None => ln_2.forward_residual(p, &attn, x)?,
        };
        x.add(&self.weights.mlp(p, &h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd;
    use crate::model::TextEncoder;
    use crate::model::packing::CaptionPacking;
    use crate::tensor::{DType, Rng};

    const SHAPE: BlockShape = BlockShape {
        width: 8,
        heads: 2,
        depth: 2,
        ln_eps: 1e-5,
        init: InitStyle::MsClip,
        activation: Activation::QuickGelu,
    };

    /// A block's output rows kept by `pooled`, and the gradients of a random weighting of them
    /// with respect to the input and every parameter (in registration order).
    fn kept_rows_and_gradients(
        params: &ParamStore,
        x: &Tensor,
        run: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let x = x.detach().set_requires_grad(true);
        let out = run(&x).unwrap();
        let weights = Rng::new(7).normal_tensor(out.dims().to_vec(), 1.0, DType::F64);
        let grads = autograd::backward(&out.mul(&weights).unwrap().sum_all().unwrap()).unwrap();
        let grad_of = |t: &Tensor| grads.get(t).map_or_else(|| vec![0.0; t.numel()], |g| g.to_f64_vec());
        let mut all = vec![grad_of(&x)];
        all.extend(params.ids().map(|id| grad_of(params.get(id))));
        (out.to_f64_vec(), all)
    }

    /// The pooled last block against the whole block followed by the same selection: the same
    /// rows and the same gradients (rounding aside: the products run over fewer rows).
    fn assert_pooled_matches_full(
        params: &ParamStore,
        x: &Tensor,
        pooled: Pooled,
        full: impl Fn(&Tensor) -> Result<Tensor>,
        kept: impl Fn(&Tensor) -> Result<Tensor>,
    ) {
        let (want, want_grads) = kept_rows_and_gradients(params, x, |x| pooled.select(&full(x)?));
        let (got, got_grads) = kept_rows_and_gradients(params, x, kept);
        let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-12);
        assert!(close(&got, &want), "kept rows differ: {got:?} vs {want:?}");
        for (k, (g, w)) in got_grads.iter().zip(&want_grads).enumerate() {
            assert!(close(g, w), "gradient {k} differs");
        }
        // The input and each of a block's 12 parameters get a gradient: the check is not empty.
        let nonzero = want_grads.iter().filter(|g| g.iter().any(|v| *v != 0.0)).count();
        assert!(nonzero >= 13, "only {nonzero} non-zero gradients");
    }

    fn blocks(shared: bool) -> (Block, Block, ParamStore) {
        let mut spec = ModelSpec::default();
        let image = Block::new(&mut spec, "image", SHAPE, (Role::Vision, Role::Shared));
        let text = match shared {
            true => Block::sharing_weights_of(&image, &mut spec, "text", SHAPE, Role::Text),
            false => Block::new(&mut spec, "text", SHAPE, (Role::Text, Role::Text)),
        };
        let (mut params, _) = spec.materialize(&mut Rng::new(3), DType::F64).unwrap();
        // LayerNorms away from their ones/zeros init, so a wrong segment split would show.
        for id in params.ids().collect::<Vec<_>>() {
            if params.name(id).contains(".ln_") {
                let moved = Rng::new(id.index() as u64).normal_tensor(params.get(id).dims().to_vec(), 0.5, DType::F64);
                params.set(id, params.get(id).add(&moved).unwrap()).unwrap();
            }
        }
        (image, text, params)
    }

    #[test]
    fn pooled_cls_rows_match_the_whole_block() {
        let (block, _, params) = blocks(false);
        let x = Rng::new(1).normal_tensor([3, 5, 8], 1.0, DType::F64);
        let mask = AttnMask::none();
        assert_pooled_matches_full(
            &params,
            &x,
            Pooled::FirstToken,
            |x| block.forward(&params, x, &mask),
            |x| block.forward_pooled(&params, x, &mask, Pooled::FirstToken),
        );
    }

    #[test]
    fn pooled_caption_rows_match_the_whole_causal_block() {
        let (_, block, params) = blocks(false);
        // Two captions of context 6 (EOT = 9, the largest id), pooled at tokens 2 and 4.
        let packing =
            CaptionPacking::new(&[8, 3, 9, 0, 0, 0, 8, 4, 5, 6, 9, 0], 6, 10, TextEncoder::Causal, None).unwrap();
        let x = Rng::new(2).normal_tensor([1, packing.tokens(), 8], 1.0, DType::F64);
        let (mask, pooled) = (packing.mask(), Pooled::Rows { rows: &packing.pooled_rows, split: 0 });
        assert_pooled_matches_full(
            &params,
            &x,
            pooled,
            |x| block.forward(&params, x, &mask),
            |x| block.forward_pooled(&params, x, &mask, pooled),
        );
    }

    #[test]
    fn pooled_fused_rows_keep_each_modality_on_its_layer_norms() {
        let (image, text, params) = blocks(true);
        // Rows 0-4 image, 5-9 text; kept: two of each, so the kept split is 2.
        let x = Rng::new(4).normal_tensor([1, 10, 8], 1.0, DType::F64);
        let rows = Table::new(vec![0, 4, 6, 9]);
        let (mask, pooled) = (AttnMask::none(), Pooled::Rows { rows: &rows, split: 2 });
        assert_pooled_matches_full(
            &params,
            &x,
            pooled,
            |x| image.forward_fused(&text, &params, x, 5, &mask, None),
            |x| image.forward_fused(&text, &params, x, 5, &mask, Some(pooled)),
        );
    }
}
