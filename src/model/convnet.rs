//! The convolutional parts of MS-CLIP-S (vision only): the early-specialisation stem, the
//! parallel branch and its lateral adapters. Every conv is bias-free and every activation
//! ReLU, as in the reference.

use super::builder::{BufferId, Buffers, Init, ModelSpec, Role};
use super::transformer::LayerNorm;
use crate::autograd::no_grad;
use crate::backend::Conv2dGeometry;
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::ops::{self, BatchNormMode};
use crate::tensor::Tensor;

/// Train mode normalises with batch statistics and updates the running ones; eval mode
/// uses the running statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// PyTorch's BatchNorm2d default momentum.
const BN_MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
struct BatchNorm {
    weight: ParamId,
    bias: ParamId,
    running_mean: BufferId,
    running_var: BufferId,
    eps: f64,
}

impl BatchNorm {
    fn new(spec: &mut ModelSpec, name: &str, channels: usize, eps: f64) -> Self {
        BatchNorm {
            weight: spec.param(format!("{name}.weight"), &[channels], Init::Ones, Role::Vision),
            bias: spec.param(format!("{name}.bias"), &[channels], Init::Zeros, Role::Vision),
            running_mean: spec.buffer(format!("{name}.running_mean"), &[channels], 0.0),
            running_var: spec.buffer(format!("{name}.running_var"), &[channels], 1.0),
            eps,
        }
    }

    /// The normalised `x`, through a ReLU (fused into the BatchNorm's kernels) if `relu`.
    fn forward(&self, p: &ParamStore, bufs: &mut Buffers, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        let (gamma, beta) = (p.get(self.weight), p.get(self.bias));
        let norm = if relu { ops::batch_norm_relu2d } else { ops::batch_norm2d };
        match mode {
            Mode::Eval => {
                // Running statistics stay in the masters' dtype; a bf16 forward reads them cast.
                let mean = bufs.get(self.running_mean).to_dtype(x.dtype())?;
                let var = bufs.get(self.running_var).to_dtype(x.dtype())?;
                Ok(norm(x, gamma, beta, self.eps, BatchNormMode::Eval { mean: &mean, var: &var })?.0)
            }
            Mode::Train => {
                let (y, stats) = norm(x, gamma, beta, self.eps, BatchNormMode::Train)?;
                let (mean, var) = stats.expect("train mode returns batch statistics");
                // Running variance uses the unbiased batch variance, as PyTorch does.
                let n = (x.numel() / x.dims()[1]) as f64;
                let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
                no_grad(|| -> Result<()> {
                    let blend = |old: &Tensor, new: &Tensor, scale: f64| -> Result<Tensor> {
                        old.scale(1.0 - BN_MOMENTUM)?.add(&new.scale(BN_MOMENTUM * scale)?)
                    };
                    let old_mean = bufs.get(self.running_mean);
                    let rm = blend(old_mean, &mean.to_dtype(old_mean.dtype())?, 1.0)?;
                    let old_var = bufs.get(self.running_var);
                    let rv = blend(old_var, &var.to_dtype(old_var.dtype())?, unbiased)?;
                    bufs.set(self.running_mean, rm);
                    bufs.set(self.running_var, rv);
                    Ok(())
                })?;
                Ok(y)
            }
        }
    }
}

/// A bias-free conv followed by BatchNorm.
#[derive(Debug, Clone, Copy)]
struct ConvBn {
    weight: ParamId,
    geo: Conv2dGeometry,
    bn: BatchNorm,
}

impl ConvBn {
    /// Conv `cin -> cout` with a square `kernel`; padding keeps "same" size at stride 1.
    fn new(
        spec: &mut ModelSpec,
        name: &str,
        (cin, cout): (usize, usize),
        kernel: usize,
        stride: usize,
        bn_eps: f64,
    ) -> Self {
        ConvBn {
            weight: spec.param(
                format!("{name}.conv.weight"),
                &[cout, cin, kernel, kernel],
                Init::Normal(0.02),
                Role::Vision,
            ),
            geo: Conv2dGeometry { stride, padding: kernel / 2, groups: 1 },
            bn: BatchNorm::new(spec, &format!("{name}.bn"), cout, bn_eps),
        }
    }

    fn forward(&self, p: &ParamStore, bufs: &mut Buffers, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.bn.forward(p, bufs, &ops::conv2d(x, p.get(self.weight), self.geo)?, mode, false)
    }

    /// `relu(forward(..))`, the ReLU fused into the BatchNorm.
    fn forward_relu(&self, p: &ParamStore, bufs: &mut Buffers, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.bn.forward(p, bufs, &ops::conv2d(x, p.get(self.weight), self.geo)?, mode, true)
    }
}

/// MS-CLIP's `EarlyconvRes`: it takes the place of visual transformer layer 0.
#[derive(Debug, Clone)]
pub struct EarlyConvStem {
    first: ConvBn,
    /// (main 3x3 conv + BN, projection shortcut 1x1 conv + BN) per residual block.
    blocks: Vec<(ConvBn, ConvBn)>,
    last_conv: ParamId,
}

impl EarlyConvStem {
    pub fn new(
        spec: &mut ModelSpec,
        name: &str,
        channels: &[usize],
        strides: &[usize],
        width: usize,
        bn_eps: f64,
    ) -> Self {
        let first = ConvBn::new(spec, &format!("{name}.conv1"), (3, channels[0]), 3, 2, bn_eps);
        let blocks = strides
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let io = (channels[i], channels[i + 1]);
                let prefix = format!("{name}.blocks.{i}");
                (
                    ConvBn::new(spec, &format!("{prefix}.main"), io, 3, s, bn_eps),
                    ConvBn::new(spec, &format!("{prefix}.skip"), io, 1, s, bn_eps),
                )
            })
            .collect();
        let last = *channels.last().expect("validated: channels is not empty");
        let last_conv =
            spec.param(format!("{name}.last_conv.weight"), &[width, last, 1, 1], Init::Normal(0.02), Role::Vision);
        EarlyConvStem { first, blocks, last_conv }
    }

    /// [batch, 3, h, w] images to the [batch, width, grid, grid] token map.
    pub fn forward(&self, p: &ParamStore, bufs: &mut Buffers, img: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = self.first.forward_relu(p, bufs, img, mode)?;
        for (main, skip) in &self.blocks {
            x = main.forward(p, bufs, &x, mode)?.add(&skip.forward(p, bufs, &x, mode)?)?.relu()?;
        }
        ops::conv2d(&x, p.get(self.last_conv), Conv2dGeometry { stride: 1, padding: 0, groups: 1 })
    }
}

/// One stage of the parallel branch.
#[derive(Debug, Clone)]
enum BranchStage {
    /// Stage 0: conv3x3/stride + BN + ReLU on the raw image.
    Plain(ConvBn),
    /// Bottleneck residual block: 1x1 -> 3x3/stride -> 1x1 (mid = out/2), projection shortcut.
    Bottleneck(Box<Bottleneck>),
}

#[derive(Debug, Clone)]
struct Bottleneck {
    reduce: ConvBn,
    spatial: ConvBn,
    expand: ConvBn,
    shortcut: ConvBn,
}

impl BranchStage {
    fn forward(&self, p: &ParamStore, bufs: &mut Buffers, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self {
            BranchStage::Plain(conv) => conv.forward_relu(p, bufs, x, mode),
            BranchStage::Bottleneck(block) => {
                let Bottleneck { reduce, spatial, expand, shortcut } = block.as_ref();
                let y = reduce.forward_relu(p, bufs, x, mode)?;
                let y = spatial.forward_relu(p, bufs, &y, mode)?;
                let y = expand.forward(p, bufs, &y, mode)?;
                y.add(&shortcut.forward(p, bufs, x, mode)?)?.relu()
            }
        }
    }
}

/// Fuses a branch stage into the trunk: the grid tokens become
/// `LN(BN(dwconv3x3(grid)) + conv1x1(BN(dwconv_k(stage))))` and CLS becomes `LN(2 cls)`.
/// This replaces the residual stream: no identity path bypasses the depthwise conv.
#[derive(Debug, Clone, Copy)]
struct LateralAdapter {
    down: ParamId,
    down_geo: Conv2dGeometry,
    down_bn: BatchNorm,
    lift: ParamId,
    mix: ParamId,
    mix_bn: BatchNorm,
    ln: LayerNorm,
}

impl LateralAdapter {
    fn new(spec: &mut ModelSpec, name: &str, channels: usize, kernel: usize, width: usize, eps: (f64, f64)) -> Self {
        let (bn_eps, ln_eps) = eps;
        let w = |spec: &mut ModelSpec, part: &str, shape: &[usize]| {
            spec.param(format!("{name}.{part}.weight"), shape, Init::Normal(0.02), Role::Vision)
        };
        LateralAdapter {
            down: w(spec, "down", &[channels, 1, kernel, kernel]),
            down_geo: Conv2dGeometry { stride: kernel, padding: 0, groups: channels },
            down_bn: BatchNorm::new(spec, &format!("{name}.down_bn"), channels, bn_eps),
            lift: w(spec, "lift", &[width, channels, 1, 1]),
            mix: w(spec, "mix", &[width, 1, 3, 3]),
            mix_bn: BatchNorm::new(spec, &format!("{name}.mix_bn"), width, bn_eps),
            ln: LayerNorm::new(spec, &format!("{name}.ln"), width, ln_eps, Role::Vision),
        }
    }

    /// `branch` is the stage output [b, c, s, s]; `x` the trunk [b, 1 + g*g, width].
    fn forward(&self, p: &ParamStore, bufs: &mut Buffers, branch: &Tensor, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, tokens, width) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let g = ((tokens - 1) as f64).sqrt() as usize;
        let one = Conv2dGeometry { stride: 1, padding: 0, groups: 1 };
        let a = ops::conv2d(branch, p.get(self.down), self.down_geo)?;
        let a = ops::conv2d(&self.down_bn.forward(p, bufs, &a, mode, false)?, p.get(self.lift), one)?;
        let cls = x.slice(1, 0, 1)?;
        let grid = x.slice(1, 1, g * g)?.permute(&[0, 2, 1])?.reshape([b, width, g, g])?;
        let depthwise = Conv2dGeometry { stride: 1, padding: 1, groups: width };
        let mixed = self.mix_bn.forward(p, bufs, &ops::conv2d(&grid, p.get(self.mix), depthwise)?, mode, false)?;
        let trunk = ops::concat(&[&cls, &map_to_tokens(&mixed)?], 1)?;
        let lateral = ops::concat(&[&cls, &map_to_tokens(&a)?], 1)?;
        self.ln.forward(p, &trunk.add(&lateral)?)
    }
}

/// [b, c, g, g] feature map to [b, g*g, c] tokens, row-major over the grid.
pub fn map_to_tokens(map: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = (map.dims()[0], map.dims()[1], map.dims()[2], map.dims()[3]);
    map.reshape([b, c, h * w])?.permute(&[0, 2, 1])
}

/// The vision-only parallel branch: stages computed lazily as the trunk reaches each
/// lateral layer, each fused in through its adapter.
#[derive(Debug, Clone)]
pub struct ParallelBranchNet {
    stages: Vec<BranchStage>,
    adapters: Vec<LateralAdapter>,
}

/// Sizes the branch needs from the rest of the vision config.
pub struct BranchGeometry<'a> {
    pub channels: &'a [usize],
    pub strides: &'a [usize],
    pub image_size: usize,
    pub grid: usize,
    pub width: usize,
}

impl ParallelBranchNet {
    pub fn new(spec: &mut ModelSpec, name: &str, geo: BranchGeometry, eps: (f64, f64, f64)) -> Self {
        let (bn_eps, block_bn_eps, ln_eps) = eps;
        let (mut stages, mut adapters) = (Vec::new(), Vec::new());
        let mut side = geo.image_size;
        for (k, (&cout, &stride)) in geo.channels.iter().zip(geo.strides).enumerate() {
            let prefix = format!("{name}.stages.{k}");
            stages.push(if k == 0 {
                BranchStage::Plain(ConvBn::new(spec, &prefix, (3, cout), 3, stride, bn_eps))
            } else {
                let (cin, mid) = (geo.channels[k - 1], cout / 2);
                BranchStage::Bottleneck(Box::new(Bottleneck {
                    reduce: ConvBn::new(spec, &format!("{prefix}.reduce"), (cin, mid), 1, 1, block_bn_eps),
                    spatial: ConvBn::new(spec, &format!("{prefix}.spatial"), (mid, mid), 3, stride, block_bn_eps),
                    expand: ConvBn::new(spec, &format!("{prefix}.expand"), (mid, cout), 1, 1, block_bn_eps),
                    shortcut: ConvBn::new(spec, &format!("{prefix}.shortcut"), (cin, cout), 1, stride, block_bn_eps),
                }))
            });
            side = side.div_ceil(stride);
            let kernel = side / geo.grid;
            let adapter =
                LateralAdapter::new(spec, &format!("{name}.adapters.{k}"), cout, kernel, geo.width, (bn_eps, ln_eps));
            adapters.push(adapter);
        }
        ParallelBranchNet { stages, adapters }
    }

    /// Runs stage `k` on `input` (the image for k = 0, else stage k-1's output) and fuses
    /// it into the trunk `x`. Returns (stage output, new trunk).
    pub fn fuse(
        &self,
        k: usize,
        p: &ParamStore,
        bufs: &mut Buffers,
        input: &Tensor,
        x: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let stage = self.stages[k].forward(p, bufs, input, mode)?;
        let fused = self.adapters[k].forward(p, bufs, &stage, x, mode)?;
        Ok((stage, fused))
    }
}
