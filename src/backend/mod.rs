//! The op set every device implements, forward and backward.
//!
//! Backends compute values only: they never record on the tape and may assume that the
//! autograd layer (`crate::ops`) has already checked shapes and dtypes. Each op that needs
//! saved state for its backward returns it explicitly (LayerNorm statistics, attention
//! log-sum-exp), so a GPU backend can keep the same split between forward and backward
//! kernels.

pub mod cpu;
pub mod gpu;
pub mod timed;

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Shape, Table, Tensor};

/// Element-wise binary ops. The right operand's shape must equal the trailing dimensions
/// of the left operand's; it is repeated over the leading ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
}

/// Element-wise unary ops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Exp,
    Ln,
    Relu,
    /// `x * sigmoid(1.702 x)`, the activation of CLIP's MLPs.
    QuickGelu,
    /// Multiplication by a constant.
    Scale(f64),
    /// The exact GELU, `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` (torch.nn.GELU).
    Gelu,
}

/// The activation of a transformer MLP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP's, open_clip's `-quickgelu` models.
    #[default]
    QuickGelu,
    /// The exact GELU (torch.nn.GELU): open_clip's plain `ViT-B-32`, `ViT-B-16`.
    Gelu,
}

impl Activation {
    /// The element-wise op.
    pub fn unary(self) -> UnaryOp {
        match self {
            Activation::QuickGelu => UnaryOp::QuickGelu,
            Activation::Gelu => UnaryOp::Gelu,
        }
    }

    /// The name of the fused bias + activation op: its tape and timing name, and its kernels'
    /// base name.
    pub fn bias_op(self) -> &'static str {
        match self {
            Activation::QuickGelu => "bias_quick_gelu",
            Activation::Gelu => "bias_gelu",
        }
    }

    /// The name of its backward.
    pub fn bias_op_backward(self) -> &'static str {
        match self {
            Activation::QuickGelu => "bias_quick_gelu_backward",
            Activation::Gelu => "bias_gelu_backward",
        }
    }
}

/// Which keys a query may attend to. Combinations are allowed: causal plus key padding, either
/// over the batch rows or over packed sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttnMask {
    /// Query i sees keys 0..=i only (positions within its sequence), in the sequences from
    /// `first_causal_sequence` on.
    pub causal: bool,
    /// With `causal`, the first sequence the causal mask applies to; the ones before it attend in
    /// full. 0 (the default): every sequence. A modality-fused layer packs its images (full
    /// attention) before its captions (causal) and starts the causal mask at the first caption.
    pub first_causal_sequence: usize,
    /// Per sequence, the number of valid keys; keys at or past it get zero weight.
    pub key_lengths: Option<Vec<usize>>,
    /// Varlen packing: cumulative offsets `[0, n_0, n_0 + n_1, ..., total]` of sequences laid
    /// back to back in a qkv of batch 1 and `total` tokens. Each sequence attends within itself
    /// only, exactly as if it were its own batch row of length n_s, so captions trimmed to their
    /// own lengths share one launch. None: every batch row is one sequence.
    pub sequence_offsets: Option<Vec<usize>>,
    /// The offsets as a table the kernels read, made once by [`AttnMask::packed`] for every call
    /// that shares the mask; without it each GPU call uploads `sequence_offsets` itself. A
    /// captured graph's next launch gets new offsets by a rewrite of this table, so then
    /// `sequence_offsets` holds the capture's (see `longest_bound`).
    pub offsets_table: Option<Table>,
    /// At most this many tokens in any sequence of any call the mask may describe: the GPU
    /// sizes its grid for it rather than for the longest of `sequence_offsets`, so the launch
    /// fits a rewritten `offsets_table` too. None: the longest of `sequence_offsets`.
    pub longest_bound: Option<usize>,
    /// Two segments in every sequence (OneR's joint image+text sequence) and which attends to
    /// which; None: one segment, every key visible as the other masks allow.
    pub segments: Option<SegmentMask>,
}

/// Every sequence of a call cut in two segments at the same `boundary` (its first `boundary`
/// tokens, all of a shorter sequence, form segment 0; the rest segment 1), and which segment's
/// keys each segment's queries see: `visible[query segment][key segment]`. Every choice leaves a
/// query one contiguous range of keys (both segments, its own, or the other's), which the causal
/// mask and key padding then cut from the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMask {
    pub boundary: usize,
    pub visible: [[bool; 2]; 2],
}

impl SegmentMask {
    /// Each segment sees both (the same as no segments).
    pub fn full(boundary: usize) -> Self {
        SegmentMask { boundary, visible: [[true, true], [true, true]] }
    }
    /// Each segment sees only itself: the two run as if apart.
    pub fn block_diagonal(boundary: usize) -> Self {
        SegmentMask { boundary, visible: [[true, false], [false, true]] }
    }
    /// Each segment sees only the other: segment 0's queries attend to segment 1's keys and
    /// values, and the reverse (OneR's contextual invariance contrast).
    pub fn cross(boundary: usize) -> Self {
        SegmentMask { boundary, visible: [[false, true], [true, false]] }
    }

    /// The visibility as the kernels take it: bit `2 * query segment + key segment`.
    pub fn bits(&self) -> i32 {
        (0..4).filter(|&b| self.visible[b / 2][b % 2]).map(|b| 1 << b).sum()
    }

    /// The keys of the segments query `q` of a sequence of `len` tokens sees.
    fn keys_of(&self, q: usize, len: usize) -> std::ops::Range<usize> {
        let boundary = self.boundary.min(len);
        match self.visible[usize::from(q >= boundary)] {
            [true, true] => 0..len,
            [true, false] => 0..boundary,
            [false, true] => boundary..len,
            [false, false] => 0..0,
        }
    }
}

/// One sequence of an attention call: where its tokens are in qkv (batch row, first position
/// in the row) and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnSequence {
    pub row: usize,
    pub start: usize,
    pub len: usize,
}

impl AttnMask {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn causal() -> Self {
        AttnMask { causal: true, ..Self::default() }
    }
    pub fn key_padding(lengths: Vec<usize>) -> Self {
        AttnMask { key_lengths: Some(lengths), ..Self::default() }
    }
    /// Sequences packed back to back at the cumulative `offsets` (see [`AttnMask::sequence_offsets`]).
    pub fn packed(offsets: Vec<usize>, causal: bool) -> Self {
        let table = Table::of_counts(&offsets, "sequence offset").ok();
        AttnMask { causal, sequence_offsets: Some(offsets), offsets_table: table, ..Self::default() }
    }
    /// Packed sequences of which the first `full` attend in full and the rest causally.
    pub fn packed_causal_after(offsets: Vec<usize>, full: usize) -> Self {
        AttnMask { first_causal_sequence: full, ..Self::packed(offsets, true) }
    }

    /// Whether sequence `s` is under the causal mask.
    pub fn is_causal(&self, s: usize) -> bool {
        self.causal && s >= self.first_causal_sequence
    }

    /// The sequences of a call on qkv [batch, len, 3*width], in order: the batch rows, or the
    /// packed sequences of row 0. Sequence s takes `key_lengths[s]`.
    pub fn sequences(&self, batch: usize, len: usize) -> Vec<AttnSequence> {
        match &self.sequence_offsets {
            Some(offsets) => {
                offsets.windows(2).map(|w| AttnSequence { row: 0, start: w[0], len: w[1] - w[0] }).collect()
            }
            None => (0..batch).map(|row| AttnSequence { row, start: 0, len }).collect(),
        }
    }

    /// Whether the mask fits a call on qkv [batch, len, 3*width]: packed sequences need batch 1
    /// and offsets that start at 0, never decrease and end at len; key lengths are one per
    /// sequence and at most its length; the causal mask starts at one of the sequences (or just
    /// past the last).
    pub fn check(&self, op: &'static str, batch: usize, len: usize) -> Result<()> {
        if let Some(offsets) = &self.sequence_offsets {
            if batch != 1 {
                return Err(Error::shape(op, format!("packed sequences need a batch of 1, not {batch}")));
            }
            let covers = offsets.first() == Some(&0) && offsets.last() == Some(&len);
            if !covers || offsets.windows(2).any(|w| w[1] < w[0]) {
                return Err(Error::index(op, format!("sequence offsets {offsets:?} do not split {len} tokens")));
            }
        }
        if let Some(lengths) = &self.key_lengths {
            let sequences = self.sequences(batch, len);
            if lengths.len() != sequences.len() {
                let detail = format!("{} key lengths for {} sequences", lengths.len(), sequences.len());
                return Err(Error::shape(op, detail));
            }
            if let Some((s, seq)) = sequences.iter().enumerate().find(|(s, seq)| lengths[*s] > seq.len) {
                let detail = format!("key length {} for sequence {s} of length {}", lengths[s], seq.len);
                return Err(Error::index(op, detail));
            }
        }
        let sequences = self.sequences(batch, len).len();
        if self.first_causal_sequence > sequences {
            let detail = format!("the causal mask starts at sequence {} of {sequences}", self.first_causal_sequence);
            return Err(Error::index(op, detail));
        }
        Ok(())
    }

    /// The keys query `q` of sequence `s` sees among the sequence's `len` (none for a query past
    /// the end): always one contiguous range, the segments' keys cut from the end by the causal
    /// mask and key padding.
    pub fn key_range(&self, s: usize, q: usize, len: usize) -> std::ops::Range<usize> {
        if q >= len {
            return 0..0;
        }
        let segment = self.segments.map_or(0..len, |segments| segments.keys_of(q, len));
        let causal_limit = if self.is_causal(s) { q + 1 } else { len };
        let padding_limit = self.key_lengths.as_ref().map_or(len, |lengths| lengths[s]);
        let end = segment.end.min(causal_limit).min(padding_limit);
        if end <= segment.start { 0..0 } else { segment.start..end }
    }
}

/// Geometry of a 2-D convolution, NCHW input and [C_out, C_in/groups, kh, kw] weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

/// The gamma and beta of a LayerNorm by row segment: every row takes `gamma` and `beta` or, with
/// `second`, the rows from `second.first_row` on take the second pair. So the image rows and the
/// text rows of a modality-shared layer, each modality with its own LayerNorm, normalise in one
/// launch.
#[derive(Clone)]
pub struct LnAffine {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub second: Option<LnSegment>,
}

/// The second row segment of an [`LnAffine`].
#[derive(Clone)]
pub struct LnSegment {
    /// Its first row among the rows of the normalised tensor (all dimensions but the last).
    pub first_row: usize,
    pub gamma: Tensor,
    pub beta: Tensor,
}

impl LnAffine {
    /// One gamma and beta for every row.
    pub fn new(gamma: &Tensor, beta: &Tensor) -> Self {
        LnAffine { gamma: gamma.clone(), beta: beta.clone(), second: None }
    }

    /// These for the rows before `first_row`, `gamma` and `beta` for the rest.
    pub fn with_second(self, first_row: usize, gamma: &Tensor, beta: &Tensor) -> Self {
        LnAffine { second: Some(LnSegment { first_row, gamma: gamma.clone(), beta: beta.clone() }), ..self }
    }

    /// How many of `rows` rows the first segment holds.
    pub fn first_rows(&self, rows: usize) -> usize {
        self.second.as_ref().map_or(rows, |s| s.first_row.min(rows))
    }

    /// The gamma and beta of the rows from `first_rows` on: the second segment's, or the first's
    /// when there is none.
    pub fn second_or_first(&self) -> (&Tensor, &Tensor) {
        self.second.as_ref().map_or((&self.gamma, &self.beta), |s| (&s.gamma, &s.beta))
    }
}

/// Backward outputs of LayerNorm.
pub struct LayerNormGrads {
    pub dx: Tensor,
    /// Over the rows of the first segment (all rows without a second).
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    /// d gamma and d beta of the second segment, when the affine has one.
    pub second: Option<(Tensor, Tensor)>,
}

/// Refuses a `dx_plus` of [`Backend::layer_norm_backward`] unlike its input in shape or dtype.
pub fn check_dx_plus(input: &Tensor, dx_plus: Option<&Tensor>) -> Result<()> {
    match dx_plus {
        Some(p) if p.shape() != input.shape() || p.dtype() != input.dtype() => Err(Error::shape(
            "layer_norm_backward",
            format!("a gradient of {} {} added into dx of {} {}", p.dtype(), p.shape(), input.dtype(), input.shape()),
        )),
        _ => Ok(()),
    }
}

/// Forward outputs of (residual-add +) LayerNorm.
pub struct LayerNormOut {
    /// `x + residual` when a residual was given: the next residual stream.
    pub sum: Option<Tensor>,
    pub y: Tensor,
    /// Per-row mean and 1/sqrt(var + eps), saved for backward.
    pub mean: Tensor,
    pub rstd: Tensor,
}

/// Forward outputs of BatchNorm.
pub struct BatchNormOut {
    pub y: Tensor,
    /// Per-channel mean and biased variance normalised with: the batch's (training) or the
    /// given ones (evaluation).
    pub mean: Tensor,
    pub var: Tensor,
    /// [2, C]: the per-channel scale and shift applied (`y = x * scale + shift`), in the
    /// precision the backend applied them (fp32 for every dtype on a GPU), from which the
    /// backward of a fused ReLU recomputes its mask exactly.
    pub affine: Tensor,
}

/// How much each direction of the contrast counts. Over n pairs with logits z (rows the first
/// set, columns the second), the loss is
/// `(1/n) sum_i [rows (row_lse_i - z_ii) + columns (col_lse_i - z_ii)]`: CLIP's symmetric loss is
/// (1/2, 1/2), the one-directional `NCE(a, b)` (each row picks its pair among the columns, as
/// OneR's cross-modal mixup contrast needs) is (1, 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContrastWeights {
    pub rows: f64,
    pub columns: f64,
}

impl ContrastWeights {
    pub const SYMMETRIC: ContrastWeights = ContrastWeights { rows: 0.5, columns: 0.5 };
    pub const ROWS: ContrastWeights = ContrastWeights { rows: 1.0, columns: 0.0 };

    /// The weight of a positive logit's terms `-z_ii`, per copy of the `-2 z_ii` the kernels sum.
    pub fn positives(&self) -> f64 {
        (self.rows + self.columns) / 2.0
    }

    /// Both weights finite and non-negative, and not both zero.
    pub fn check(&self, op: &'static str) -> Result<()> {
        let valid = |w: f64| w.is_finite() && w >= 0.0;
        if !valid(self.rows) || !valid(self.columns) || self.rows + self.columns == 0.0 {
            return Err(Error::invalid(op, format!("direction weights {self:?}: finite, >= 0, not both 0")));
        }
        Ok(())
    }
}

/// Forward outputs of InfoNCE.
pub struct InfoNceOut {
    /// Shape [1]: the loss of `ContrastWeights` (for the symmetric weights the mean of the
    /// image->text and text->image cross-entropies).
    pub loss: Tensor,
    /// Log-sum-exp of each logits row (image i against all texts) and column.
    pub row_lse: Tensor,
    pub col_lse: Tensor,
}

/// One data-parallel rank's inputs of symmetric InfoNCE over a global batch of n pairs: its image
/// rows `offset .. offset + n_local` against all n texts (all-gathered). The rank holds rows of
/// the logits only, so each of its rows' log-sum-exp is complete and each column's is over its
/// rows alone (`Backend::infonce_partial`). The whole batch is the one rank of
/// `InfoNceShard::whole`.
#[derive(Clone, Copy)]
pub struct InfoNceShard<'a> {
    /// [n_local, d]: the rank's image features.
    pub img: &'a Tensor,
    /// [n, d]: the features of every text of the batch.
    pub txt: &'a Tensor,
    /// One element; the logits are `min(exp(logit_scale), max_scale) * img @ txt^T`.
    pub logit_scale: &'a Tensor,
    pub max_scale: Option<f64>,
    /// The global index of the rank's first row.
    pub offset: usize,
    pub weights: ContrastWeights,
}

impl<'a> InfoNceShard<'a> {
    /// The whole batch of the symmetric loss: `img` and `txt` both [n, d].
    pub fn whole(img: &'a Tensor, txt: &'a Tensor, logit_scale: &'a Tensor, max_scale: Option<f64>) -> Self {
        InfoNceShard { img, txt, logit_scale, max_scale, offset: 0, weights: ContrastWeights::SYMMETRIC }
    }

    pub fn with_weights(self, weights: ContrastWeights) -> Self {
        InfoNceShard { weights, ..self }
    }

    /// `check`, and that the shard is the whole batch (the one rank): `img` and `txt` both [n, d].
    pub fn check_whole(&self, op: &'static str) -> Result<()> {
        self.check(op)?;
        if self.offset != 0 || self.img.dims()[0] != self.txt.dims()[0] {
            let rows = format!("rows {}..{}", self.offset, self.offset + self.img.dims()[0]);
            return Err(Error::shape(
                op,
                format!("{rows} of {} pairs where the whole batch was expected", self.txt.dims()[0]),
            ));
        }
        Ok(())
    }

    /// (n_local, n, d).
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.img.dims()[0], self.txt.dims()[0], self.txt.dims()[1])
    }

    /// Checks the shapes: `img` [n_local, d] holds global rows `offset .. offset + n_local` of a
    /// batch whose `txt` is [n, d]. Backends call it, since no autograd op sits in front of the
    /// sharded entry points.
    pub fn check(&self, op: &'static str) -> Result<()> {
        let (img, txt, offset) = (self.img, self.txt, self.offset);
        let (&[n_local, d], &[n, txt_d]) = (img.dims(), txt.dims()) else {
            return Err(Error::shape(
                op,
                format!("features must be [rows, d], got {} and {}", img.shape(), txt.shape()),
            ));
        };
        if d != txt_d || d == 0 || n_local == 0 || offset + n_local > n {
            let rows = format!("rows {offset}..{}", offset + n_local);
            return Err(Error::shape(
                op,
                format!("{rows} of image features {} against texts {}", img.shape(), txt.shape()),
            ));
        }
        if self.logit_scale.numel() != 1 {
            return Err(Error::shape(
                op,
                format!("logit_scale has shape {}, not one element", self.logit_scale.shape()),
            ));
        }
        self.weights.check(op)
    }
}

/// One rank's forward state before the cross-rank combine of the column log-sum-exps.
pub struct InfoNcePartial {
    /// [n_local]: log-sum-exp of each of the rank's logits rows (its images against all texts).
    pub row_lse: Tensor,
    /// [n]: log-sum-exp of each logits column over the rank's rows only. The caller all-gathers
    /// these, in rank order, into the [ranks, n] input of `Backend::infonce_finish`.
    pub col_lse: Tensor,
    /// 1-D partial sums (fp32 on a GPU, one per block of rows) whose total is `-2 z_ii` summed
    /// over the rank's positive pairs (rows i, columns i).
    pub positive_terms: Tensor,
    /// The rank's `InfoNceShard::offset`.
    pub offset: usize,
    /// The shard's `InfoNceShard::weights`, which the loss takes.
    pub weights: ContrastWeights,
    /// The dtype of the features, which the loss takes.
    pub dtype: DType,
}

impl InfoNcePartial {
    /// Checks the input of `Backend::infonce_finish`: `col_partials` is [ranks, n], of the dtype
    /// of the rank's own partial column log-sum-exps.
    pub fn check_gathered(&self, op: &'static str, col_partials: &Tensor) -> Result<()> {
        let (n_local, n) = (self.row_lse.numel(), self.col_lse.numel());
        if col_partials.dtype() != self.col_lse.dtype() {
            let detail =
                format!("column partials are {}, the rank's own {}", col_partials.dtype(), self.col_lse.dtype());
            return Err(Error::dtype(op, detail));
        }
        match col_partials.dims() {
            &[ranks, cols] if ranks > 0 && cols == n && self.offset + n_local <= n => Ok(()),
            _ => Err(Error::shape(op, format!("column partials {} for {n} columns", col_partials.shape()))),
        }
    }
}

/// The hyper-parameters an AdamW step shares across all tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep<'a> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 1-based step count, for bias correction.
    pub step: u64,
    /// Global-norm clipping: when the L2 norm of all the step's gradients exceeds this, every
    /// gradient is multiplied by `max / norm` before use. None: no clipping.
    pub max_grad_norm: Option<f64>,
    /// The step's constants as the GPU kernels read them ([`adamw_constants`], a tensor's at its
    /// `row`), in a table the caller keeps: rewritten before each step, it gives a captured
    /// graph of the step the next step's learning rate and bias corrections. None: the GPU
    /// backend makes them from `step` and each tensor's `lr` and `weight_decay`, rows in call
    /// order. The CPU computes them itself, in the parameters' dtype.
    pub constants: Option<&'a Table>,
}

/// An AdamW step's constants as f32 bits, in the order the GPU kernel reads them:
/// sqrt(1 - beta2^t), then per (learning rate, weight decay) row 1 - lr * wd and
/// lr / (1 - beta1^t). Computed in f64 and rounded once, as the CPU reference does.
pub fn adamw_constants(beta1: f64, beta2: f64, step: u64, rows: impl Iterator<Item = (f64, f64)>) -> Vec<u32> {
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    let mut words = vec![(bc2.sqrt() as f32).to_bits()];
    for (lr, weight_decay) in rows {
        words.extend([((1.0 - lr * weight_decay) as f32).to_bits(), ((lr / bc1) as f32).to_bits()]);
    }
    words
}

/// One tensor of a multi-tensor AdamW update, with its group's learning rate and weight decay.
pub struct AdamWTensor<'a> {
    /// Updated in place (the fp32 master weights on a GPU).
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    /// First and second moments, same shape and dtype as `param`, updated in place.
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
    /// When given, a bf16 tensor of `param`'s shape that receives the updated parameter rounded
    /// to nearest even: the compute copy of a mixed-precision model, written in the same pass.
    pub bf16_copy: Option<&'a mut Tensor>,
    pub lr: f64,
    pub weight_decay: f64,
    /// Its row in [`AdamWStep::constants`] (read only when they are given).
    pub row: usize,
    /// When given, the updated parameter is clamped to `[lo, hi]` (in its own dtype) in the same
    /// pass: open_clip's clamp of the logit scale, with no round trip to the host.
    pub clamp: Option<(f64, f64)>,
}

/// The op set of a device.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;

    /// Batched `op(a) @ op(b) (+ bias)`. `a` is [batch, m, k] ([batch, k, m] when `trans_a`),
    /// `b` is [batch, k, n] ([batch, n, k] when `trans_b`), `bias` is [n]. Returns [batch, m, n].
    fn matmul(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor>;
    /// [`Self::matmul`] of one product ([1, m, n], no bias) and the sums of op(a)'s rows ([m],
    /// over k): with a = dy and `trans_a`, a linear layer's weight gradient and its bias
    /// gradient in one call, which a GPU computes in one GEMM (cuBLASLt's bias-gradient
    /// epilogue) instead of reading dy again.
    fn matmul_bias_grad(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Tensor, Tensor)>;

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor>;
    /// dL/dx given x, y = op(x) and dL/dy.
    fn unary_backward(&self, op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor>;

    /// `act(x + bias)` with `bias` [width] repeated over the rows of `x` [.., width]: the
    /// activation of a transformer MLP fused with the bias of the GEMM before it (cuBLASLt has
    /// no QuickGELU epilogue).
    fn bias_activation(&self, x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor>;
    /// Returns (d x, d bias); d bias sums over the rows in a fixed order.
    fn bias_activation_backward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        dy: &Tensor,
        act: Activation,
    ) -> Result<(Tensor, Tensor)>;

    /// Views `x` as [outer, n, inner] and sums over the middle: returns [outer, inner].
    fn sum_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor>;
    /// The inverse layout of `sum_middle`: repeats [outer, inner] n times into [outer, n, inner].
    fn repeat_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor>;

    /// Moves dimension `i` of the input to position `i` of `perm` order: out.dims[j] = x.dims[perm[j]].
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor>;
    /// Concatenates along `dim` (all other dims equal).
    fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor>;
    /// Elements `start..start+len` along `dim`.
    fn slice(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor>;
    /// The adjoint of `slice`: `x` placed at `start` along `dim` of a zero tensor of length `full`.
    fn pad_slice(&self, x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor>;

    /// Rows `ids` of a [rows, d] table: [ids.len(), d]. Embedding lookup and token selection.
    fn index_rows(&self, table: &Tensor, ids: &Table) -> Result<Tensor>;
    /// The adjoint of `index_rows`: [rows, d] with dy's row j added into row ids[j], in a
    /// fixed order so the result is deterministic.
    fn index_rows_backward(&self, dy: &Tensor, ids: &Table, rows: usize) -> Result<Tensor>;

    /// LayerNorm over the last dimension of `x` (or of `x + residual`), each row segment of
    /// `affine` with its own gamma and beta.
    fn layer_norm(&self, x: &Tensor, residual: Option<&Tensor>, affine: &LnAffine, eps: f64) -> Result<LayerNormOut>;
    /// `input` is the normalised tensor (x or x + residual); the betas of `affine` are not read.
    /// `dx_plus`, where given, is added into dx before it is rounded: a gradient that reaches
    /// `input` by another path (the residual stream's own, when `input` is a fused residual
    /// sum), so the two gradients are not added in a pass of their own.
    fn layer_norm_backward(
        &self,
        input: &Tensor,
        affine: &LnAffine,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dx_plus: Option<&Tensor>,
    ) -> Result<LayerNormGrads>;

    /// Softmax over the last dimension.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;
    fn softmax_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor>;

    /// `x / max(||x||, eps)` over the last dimension. Returns (y, per-row norms).
    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)>;
    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor>;

    /// Multi-head attention on packed projections. `qkv` is [batch, len, 3*width] with q, k
    /// and v blocks in that order, each split into `heads` heads; q is scaled by
    /// 1/sqrt(head_dim). Returns ([batch, len, width], log-sum-exp [batch, heads, len]).
    /// A query that sees no key gets a zero output and a log-sum-exp of -inf. With
    /// `mask.sequence_offsets`, batch is 1 and the tokens are several sequences back to back.
    fn attention(&self, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)>;
    /// Returns d qkv. Probabilities are recomputed from q, k and the saved log-sum-exp.
    fn attention_backward(
        &self,
        qkv: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        heads: usize,
        mask: &AttnMask,
    ) -> Result<Tensor>;

    /// InfoNCE over the whole batch (`InfoNceShard::check_whole`): [n, d] image and text features with
    /// logits `min(exp(logit_scale), max_scale) * img @ txt^T`, pair i the positive of row i, the
    /// directions weighted by `pairs.weights`.
    fn infonce(&self, pairs: InfoNceShard<'_>) -> Result<InfoNceOut>;

    /// A data-parallel rank's forward: its complete row and partial column log-sum-exps (see
    /// `InfoNceShard`).
    fn infonce_partial(&self, shard: InfoNceShard<'_>) -> Result<InfoNcePartial>;
    /// Finishes a rank's forward from `col_partials` [ranks, n], every rank's
    /// `InfoNcePartial::col_lse` in rank order: the column log-sum-exps are their log-sum-exp
    /// over ranks, in a fixed order, so all ranks get the same values. Returns the rank's share of
    /// the loss (the terms of its rows and of the columns with the same indices: the shares of all
    /// ranks sum to the loss), its row and all n column log-sum-exps.
    fn infonce_finish(&self, partial: &InfoNcePartial, col_partials: &Tensor) -> Result<InfoNceOut>;
    /// The backward of the whole batch or of a rank: the gradient of the GLOBAL loss (`dloss` is
    /// its upstream gradient, the same on every rank) through the shard's rows of the logits.
    /// Returns (d img [n_local, d], complete; d txt [n, d] and d logit_scale [1], the rank's parts,
    /// which the caller sums across ranks: reduce-scatter and all-reduce). `out` comes from
    /// `infonce` or `infonce_finish`.
    fn infonce_backward(
        &self,
        shard: InfoNceShard<'_>,
        out: &InfoNceOut,
        dloss: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)>;

    /// Mean cross-entropy of [n, classes] logits against class indices. Returns (loss [1], lse [n]).
    /// Mean cross-entropy of [n, classes] logits against `targets` (one per row, each below
    /// `classes` or [`crate::ops::IGNORE_TARGET`]: such a row adds nothing and the mean is over
    /// the others), and each row's log-sum-exp.
    fn cross_entropy(&self, logits: &Tensor, targets: &Table) -> Result<(Tensor, Tensor)>;
    fn cross_entropy_backward(&self, logits: &Tensor, lse: &Tensor, targets: &Table, dloss: &Tensor) -> Result<Tensor>;

    fn conv2d(&self, x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor>;
    /// Returns (d x if `need_dx`, d w).
    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        geo: Conv2dGeometry,
        need_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor)>;

    /// BatchNorm over N, H, W of an NCHW tensor with the batch's own statistics (training),
    /// then a ReLU if `relu` (fused: the output is relu(BN(x))).
    fn batch_norm_train(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, relu: bool)
    -> Result<BatchNormOut>;
    /// BatchNorm with given statistics (evaluation, running mean and variance), then a ReLU if
    /// `relu`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormOut>;
    /// Returns (d x, d gamma, d beta) from `dy`, the gradient of the forward's output; `mean`,
    /// `var` and `affine` are the forward's ([`BatchNormOut`]). With `batch_stats`, the mean
    /// and variance are those of the batch and depend on x (training); otherwise they are
    /// constants (evaluation). With `relu`, the forward fused a ReLU and dy is first masked by
    /// it.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        affine: &Tensor,
        dy: &Tensor,
        eps: f64,
        batch_stats: bool,
        relu: bool,
    ) -> Result<(Tensor, Tensor, Tensor)>;

    /// One decoupled-weight-decay Adam update of every tensor in `tensors`, in place, with
    /// global-norm clipping (three launches on a GPU, none of them waited for). Returns the L2 norm of all
    /// the gradients before clipping, as a [1] tensor of the parameters' dtype on this device
    /// (reading it is the caller's choice: on a GPU that waits for the step). When that norm is
    /// not finite nothing is updated, parameters, moments and copies alike: the step is
    /// skipped, as PyTorch's GradScaler skips it, and the caller learns of it from the norm.
    fn adamw_multi(&self, tensors: &mut [AdamWTensor<'_>], hp: AdamWStep) -> Result<Tensor>;

    /// Moves every target toward its source in place, `t += weight * (s - t)`: an exponential
    /// moving average with decay `1 - weight` (one launch on a GPU). Targets and sources pair up
    /// in order, each pair of one length and dtype (fp32 on a GPU); nothing is read back.
    fn ema_update(&self, targets: &mut [&mut Tensor], sources: &[&Tensor], weight: f64) -> Result<()>;
}

/// [`Backend::matmul_bias_grad`] as two calls: the product, then the sums of op(a)'s rows
/// (`sum_middle` over a's k axis).
pub fn matmul_then_row_sums(
    backend: &dyn Backend,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> Result<(Tensor, Tensor)> {
    let (batch, rows, cols) = match a.dims() {
        &[batch, rows, cols] => (batch, rows, cols),
        _ => unreachable!("ops::matmul passes rank-3 operands"),
    };
    if batch != 1 {
        return Err(Error::shape("matmul_bias_grad", format!("one product, not a batch of {batch}")));
    }
    let product = backend.matmul(a, b, trans_a, trans_b, None)?;
    // op(a) is [m, k]: a is [k, m] when transposed (sum over its rows), else [m, k] (over its
    // columns).
    let sums = if trans_a { backend.sum_middle(a, 1, rows, cols)? } else { backend.sum_middle(a, rows, cols, 1)? };
    let m = sums.numel();
    Ok((product, sums.view_as(Shape::new([m]))?))
}

/// The backend of a device (timed per kind of op while [`timed::measure`] runs on this thread,
/// and each call an NVTX range while a profiler records them).
pub fn get(device: Device) -> &'static dyn Backend {
    if timed::active() || crate::nvtx::enabled() {
        return timed::backend(device);
    }
    match device {
        Device::Cpu => &cpu::CpuBackend,
        Device::Emu => &EMU,
        Device::Cuda => &CUDA,
    }
}

static EMU: gpu::GpuBackend = gpu::GpuBackend::new(Device::Emu);
static CUDA: gpu::GpuBackend = gpu::GpuBackend::new(Device::Cuda);
