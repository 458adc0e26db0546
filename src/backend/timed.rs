//! Time per kind of op: a [`Backend`] that wraps another and adds each call's wall time to its
//! kind (GEMM, attention, LayerNorm, ...). While [`measure`] runs, [`super::get`] hands out the
//! wrapped backends on that thread, so every op of a training step is timed without the ops or
//! the model knowing. On a GPU the wrapper waits for the device before and after each call, so a
//! call's time is its device time (plus one synchronisation); such a run says where the time
//! goes, not how fast the step is, and a throughput measurement runs without it.
//!
//! Each call is also kept as an [`OpEvent`] (its name, kind, start and length), from which
//! `msclip bench step --trace` writes a Chrome/Perfetto trace of the step.
//!
//! While a profiler records NVTX ranges ([`crate::nvtx`]), [`super::get`] hands out the wrapped
//! backends on every thread, measuring or not, and each call is also an NVTX range of the same
//! name; outside a [`measure`] the wrapper neither waits for the device nor keeps events, so the
//! profile shows the step as it runs.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use super::{
    Activation, AdamWStep, AdamWTensor, AttnMask, Backend, BatchNormOut, BinaryOp, Conv2dGeometry, InfoNceOut,
    InfoNcePartial, InfoNceShard, LayerNormGrads, LayerNormOut, LnAffine, UnaryOp,
};
use crate::error::Result;
use crate::nvtx;
use crate::tensor::{DType, Device, Table, Tensor};

/// What an op is, for the breakdown of a step's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Gemm,
    Attention,
    LayerNorm,
    /// Casts, element-wise arithmetic, activations, reductions and layout changes.
    Elementwise,
    /// The contrastive and cross-entropy losses.
    Loss,
    /// Convolutions and BatchNorm (the conv stem and the parallel branch).
    Convolution,
    Optimizer,
}

impl OpKind {
    pub const ALL: [OpKind; 7] = [
        OpKind::Gemm,
        OpKind::Attention,
        OpKind::LayerNorm,
        OpKind::Elementwise,
        OpKind::Loss,
        OpKind::Convolution,
        OpKind::Optimizer,
    ];

    /// The kind of a GPU kernel, from its family's name (kernels/*.cu); GEMMs are [`OpKind::Gemm`].
    pub fn of_kernel(name: &str) -> OpKind {
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
        if starts(&["attention"]) {
            OpKind::Attention
        } else if starts(&["layernorm"]) {
            OpKind::LayerNorm
        } else if starts(&["infonce", "cross_entropy"]) {
            OpKind::Loss
        } else if starts(&["adamw", "grad_"]) {
            OpKind::Optimizer
        } else if starts(&["im2col", "col2im", "bn_", "dwconv"]) {
            OpKind::Convolution
        } else {
            OpKind::Elementwise
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Gemm => "gemm",
            OpKind::Attention => "attention",
            OpKind::LayerNorm => "layernorm",
            OpKind::Elementwise => "elementwise",
            OpKind::Loss => "loss",
            OpKind::Convolution => "convolution",
            OpKind::Optimizer => "optimizer",
        }
    }
}

/// Seconds and calls per kind of op.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTimes {
    seconds: [f64; 7],
    calls: [u64; 7],
}

impl OpTimes {
    /// The sums of `events` per kind of op.
    fn of(events: &[OpEvent]) -> Self {
        let mut times = OpTimes::default();
        for e in events {
            times.seconds[e.kind as usize] += e.seconds;
            times.calls[e.kind as usize] += 1;
        }
        times
    }

    pub fn seconds(&self, kind: OpKind) -> f64 {
        self.seconds[kind as usize]
    }

    pub fn calls(&self, kind: OpKind) -> u64 {
        self.calls[kind as usize]
    }

    pub fn total_seconds(&self) -> f64 {
        self.seconds.iter().sum()
    }
}

/// One timed backend call: which, and when relative to the start of its [`measure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpEvent {
    /// The backend method (`matmul`, `layer_norm_backward`, ...).
    pub name: &'static str,
    pub kind: OpKind,
    pub start_seconds: f64,
    pub seconds: f64,
}

/// What one [`measure`] saw.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub times: OpTimes,
    /// Every timed call in order.
    pub events: Vec<OpEvent>,
}

thread_local! {
    /// The calls the [`measure`] running on this thread has seen so far, and when it started;
    /// no start when none is running.
    static EVENTS: RefCell<(Vec<OpEvent>, Option<Instant>)> = const { RefCell::new((Vec::new(), None)) };
    /// Whether a timed call is running: a backend call made inside another is the outer's time.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Whether ops on this thread are being timed.
pub fn active() -> bool {
    EVENTS.with_borrow(|(_, origin)| origin.is_some())
}

/// Runs `f` with every backend call on this thread timed; returns the times per kind of op and
/// each call. Not nested: an enclosing measure's calls made inside are this one's only.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Measured) {
    let outer = EVENTS.replace((Vec::new(), Some(Instant::now())));
    let result = f();
    let (events, _) = EVENTS.replace(outer);
    (result, Measured { times: OpTimes::of(&events), events })
}

/// The wrapped backend of each device.
pub fn backend(device: Device) -> &'static dyn Backend {
    static CPU: Timed = Timed { inner: &super::cpu::CpuBackend, device: Device::Cpu };
    static EMU: Timed = Timed { inner: &super::EMU, device: Device::Emu };
    static CUDA: Timed = Timed { inner: &super::CUDA, device: Device::Cuda };
    match device {
        Device::Cpu => &CPU,
        Device::Emu => &EMU,
        Device::Cuda => &CUDA,
    }
}

struct Timed {
    inner: &'static dyn Backend,
    device: Device,
}

impl Timed {
    /// Waits for a GPU device, so that wall time brackets the device's work.
    fn settle(&self) {
        if self.device.is_gpu()
            && let Ok(driver) = super::gpu::driver(self.device)
        {
            let _ = driver.synchronize();
        }
    }

    fn timed<R>(&self, kind: OpKind, name: &'static str, call: impl FnOnce() -> R) -> R {
        let _range = nvtx::range(name);
        if INSIDE.get() || !active() {
            return call();
        }
        self.settle();
        INSIDE.set(true);
        let started = Instant::now();
        let result = call();
        self.settle();
        let seconds = started.elapsed().as_secs_f64();
        INSIDE.set(false);
        EVENTS.with_borrow_mut(|(events, origin)| {
            if let Some(origin) = origin {
                let start_seconds = started.duration_since(*origin).as_secs_f64();
                events.push(OpEvent { name, kind, start_seconds, seconds });
            }
        });
        result
    }
}

impl Backend for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "cast", || self.inner.cast(x, dtype))
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor> {
        self.timed(OpKind::Gemm, "matmul", || self.inner.matmul(a, b, trans_a, trans_b, bias))
    }

    fn matmul_bias_grad(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Tensor, Tensor)> {
        self.timed(OpKind::Gemm, "matmul_bias_grad", || self.inner.matmul_bias_grad(a, b, trans_a, trans_b))
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "binary", || self.inner.binary(op, a, b))
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "unary", || self.inner.unary(op, x))
    }

    fn unary_backward(&self, op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "unary_backward", || self.inner.unary_backward(op, x, y, dy))
    }

    fn bias_activation(&self, x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, act.bias_op(), || self.inner.bias_activation(x, bias, act))
    }

    fn bias_activation_backward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        dy: &Tensor,
        act: Activation,
    ) -> Result<(Tensor, Tensor)> {
        let name = act.bias_op_backward();
        self.timed(OpKind::Elementwise, name, || self.inner.bias_activation_backward(x, bias, dy, act))
    }

    fn sum_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "sum_middle", || self.inner.sum_middle(x, outer, n, inner))
    }

    fn repeat_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "repeat_middle", || self.inner.repeat_middle(x, outer, n, inner))
    }

    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "permute", || self.inner.permute(x, perm))
    }

    fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "concat", || self.inner.concat(xs, dim))
    }

    fn slice(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "slice", || self.inner.slice(x, dim, start, len))
    }

    fn pad_slice(&self, x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "pad_slice", || self.inner.pad_slice(x, dim, start, full))
    }

    fn index_rows(&self, table: &Tensor, ids: &Table) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "index_rows", || self.inner.index_rows(table, ids))
    }

    fn index_rows_backward(&self, dy: &Tensor, ids: &Table, rows: usize) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "index_rows_backward", || self.inner.index_rows_backward(dy, ids, rows))
    }

    fn layer_norm(&self, x: &Tensor, residual: Option<&Tensor>, affine: &LnAffine, eps: f64) -> Result<LayerNormOut> {
        self.timed(OpKind::LayerNorm, "layer_norm", || self.inner.layer_norm(x, residual, affine, eps))
    }

    fn layer_norm_backward(
        &self,
        input: &Tensor,
        affine: &LnAffine,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dx_plus: Option<&Tensor>,
    ) -> Result<LayerNormGrads> {
        self.timed(OpKind::LayerNorm, "layer_norm_backward", || {
            self.inner.layer_norm_backward(input, affine, mean, rstd, dy, dx_plus)
        })
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "softmax", || self.inner.softmax(x))
    }

    fn softmax_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "softmax_backward", || self.inner.softmax_backward(y, dy))
    }

    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        self.timed(OpKind::Elementwise, "l2_normalize", || self.inner.l2_normalize(x, eps))
    }

    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
        self.timed(OpKind::Elementwise, "l2_normalize_backward", || self.inner.l2_normalize_backward(y, norm, dy, eps))
    }

    fn attention(&self, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
        self.timed(OpKind::Attention, "attention", || self.inner.attention(qkv, heads, mask))
    }

    fn attention_backward(
        &self,
        qkv: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        heads: usize,
        mask: &AttnMask,
    ) -> Result<Tensor> {
        self.timed(OpKind::Attention, "attention_backward", || {
            self.inner.attention_backward(qkv, out, lse, dout, heads, mask)
        })
    }

    fn infonce(&self, pairs: InfoNceShard<'_>) -> Result<InfoNceOut> {
        self.timed(OpKind::Loss, "infonce", || self.inner.infonce(pairs))
    }

    fn infonce_partial(&self, shard: InfoNceShard<'_>) -> Result<InfoNcePartial> {
        self.timed(OpKind::Loss, "infonce_partial", || self.inner.infonce_partial(shard))
    }

    fn infonce_finish(&self, partial: &InfoNcePartial, col_partials: &Tensor) -> Result<InfoNceOut> {
        self.timed(OpKind::Loss, "infonce_finish", || self.inner.infonce_finish(partial, col_partials))
    }

    fn infonce_backward(
        &self,
        shard: InfoNceShard<'_>,
        out: &InfoNceOut,
        dloss: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.timed(OpKind::Loss, "infonce_backward", || self.inner.infonce_backward(shard, out, dloss))
    }

    fn cross_entropy(&self, logits: &Tensor, targets: &Table) -> Result<(Tensor, Tensor)> {
        self.timed(OpKind::Loss, "cross_entropy", || self.inner.cross_entropy(logits, targets))
    }

    fn cross_entropy_backward(&self, logits: &Tensor, lse: &Tensor, targets: &Table, dloss: &Tensor) -> Result<Tensor> {
        self.timed(OpKind::Loss, "cross_entropy_backward", || {
            self.inner.cross_entropy_backward(logits, lse, targets, dloss)
        })
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
        self.timed(OpKind::Convolution, "conv2d", || self.inner.conv2d(x, w, geo))
    }

    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        geo: Conv2dGeometry,
        need_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor)> {
        self.timed(OpKind::Convolution, "conv2d_backward", || self.inner.conv2d_backward(x, w, dy, geo, need_dx))
    }

    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormOut> {
        self.timed(OpKind::Convolution, "batch_norm_train", || self.inner.batch_norm_train(x, gamma, beta, eps, relu))
    }

    fn batch_norm_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormOut> {
        self.timed(OpKind::Convolution, "batch_norm_eval", || {
            self.inner.batch_norm_eval(x, gamma, beta, mean, var, eps, relu)
        })
    }

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
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.timed(OpKind::Convolution, "batch_norm_backward", || {
            self.inner.batch_norm_backward(x, gamma, mean, var, affine, dy, eps, batch_stats, relu)
        })
    }

    fn adamw_multi(&self, tensors: &mut [AdamWTensor<'_>], hp: AdamWStep) -> Result<Tensor> {
        self.timed(OpKind::Optimizer, "adamw_multi", || self.inner.adamw_multi(tensors, hp))
    }

    fn ema_update(&self, targets: &mut [&mut Tensor], sources: &[&Tensor], weight: f64) -> Result<()> {
        self.timed(OpKind::Optimizer, "ema_update", || self.inner.ema_update(targets, sources, weight))
    }
}
