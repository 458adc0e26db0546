//! The GPU backend: the kernels of `kernels/*.cu` orchestrated from Rust over a [`Driver`]:
//! the real GPU (cudarc, [`cuda`]) or the SIMT emulator ([`emu`]), which runs the same kernels
//! on the host. Everything in this folder except `cuda.rs` therefore runs in CI.
//!
//! One file per kernel family, each holding the Rust side of one `kernels/<family>.cu`: output
//! allocation, launch configuration and the order of launches. Tensors are contiguous, so a
//! kernel sees plain pointers; kernels exist per dtype as `<name>_f32` and `<name>_bf16`.

mod adamw;
mod attention;
mod batchnorm;
pub mod buffer;
mod context;
mod conv;
mod counted;
pub mod counters;
pub mod cuda;
pub mod driver;
mod elementwise;
mod ema;
pub mod emu;
pub mod footprint;
pub mod graph;
mod infonce;
pub mod kernel_stats;
mod layernorm;
mod layout;
mod loss;
mod matmul;
pub mod modules;
pub mod occupancy;
pub mod pool;
pub mod roofline;

use std::sync::OnceLock;

use counted::Counted;

pub use attention::{AttnTiles, check_head_dim as check_attention_head_dim, with_tiles as with_attention_tiles};
pub use buffer::GpuStorage;
pub use driver::{DevicePtr, Driver, EpilogueKind, GemmEpilogue, GemmSpec, GemmType, KernelArg, LaunchConfig};

use crate::backend::{
    Activation, AdamWStep, AdamWTensor, AttnMask, Backend, BatchNormOut, BinaryOp, Conv2dGeometry, InfoNceOut,
    InfoNcePartial, InfoNceShard, LayerNormGrads, LayerNormOut, LnAffine, UnaryOp,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Table, Tensor};

/// The driver behind a GPU device, created on first use, with its calls counted
/// ([`counters`]). For `cuda` this loads the CUDA driver library and the kernel images and fails
/// with a message that says what is missing.
pub fn driver(device: Device) -> Result<&'static dyn Driver> {
    static EMU: Counted<emu::EmuDriver> = Counted::new(emu::EmuDriver);
    static CUDA: OnceLock<std::result::Result<Counted<cuda::CudaDriver>, String>> = OnceLock::new();
    match device {
        Device::Emu => Ok(&EMU),
        Device::Cuda => match CUDA.get_or_init(|| {
            cuda::CudaDriver::new().map(Counted::new).map_err(|e| match e {
                Error::Device(message) => message,
                other => other.to_string(),
            })
        }) {
            Ok(d) => Ok(d),
            Err(message) => Err(Error::Device(message.clone())),
        },
        Device::Cpu => Err(Error::Device("the CPU has no GPU driver".into())),
    }
}

/// The GPU backend of one device.
pub struct GpuBackend {
    device: Device,
    /// Whether kernels may use wgmma where the driver has it (kernels/wgmma.cuh); off, the
    /// mma.sync variants run instead (for tests and benchmarks that compare the two).
    allow_wgmma: bool,
    /// The tile shape of the bf16 attention kernels when forced; None: `AttnTiles::choose`'s per call.
    attention_tiles: Option<AttnTiles>,
}

impl GpuBackend {
    pub const fn new(device: Device) -> Self {
        GpuBackend { device, allow_wgmma: true, attention_tiles: None }
    }

    /// The backend with every tensor-core product on mma.sync, even where wgmma is available.
    pub const fn without_wgmma(device: Device) -> Self {
        GpuBackend { device, allow_wgmma: false, attention_tiles: None }
    }

    /// This backend with its bf16 attention (forward and backward) in one tile shape rather than
    /// the one [`GpuBackend::attention_tiles`] would pick, so that benchmarks and tests reach
    /// every shape. Its attention on f32 tensors, whose kernels have no tile shapes, is an error.
    pub const fn with_attention_tiles(self, tiles: AttnTiles) -> Self {
        GpuBackend { attention_tiles: Some(tiles), ..self }
    }

    /// The tile shape this backend's bf16 attention runs a call in (None for f32 tensors, which
    /// run the exact kernels).
    pub fn attention_tiles(&self, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<Option<AttnTiles>> {
        attention::tiles(self, qkv, heads, mask)
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        match self.device {
            Device::Cuda => "cuda",
            _ => "emu",
        }
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        elementwise::cast(self, x, dtype)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor> {
        matmul::matmul(self, a, b, trans_a, trans_b, bias)
    }

    fn matmul_bias_grad(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Tensor, Tensor)> {
        matmul::matmul_bias_grad(self, a, b, trans_a, trans_b)
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        elementwise::binary(self, op, a, b)
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        elementwise::unary(self, op, x)
    }

    fn unary_backward(&self, op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        elementwise::unary_backward(self, op, x, y, dy)
    }

    fn bias_activation(&self, x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
        elementwise::bias_activation(self, x, bias, act)
    }

    fn bias_activation_backward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        dy: &Tensor,
        act: Activation,
    ) -> Result<(Tensor, Tensor)> {
        elementwise::bias_activation_backward(self, x, bias, dy, act)
    }

    fn sum_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
        elementwise::sum_middle(self, x, outer, n, inner)
    }

    fn repeat_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
        elementwise::repeat_middle(self, x, outer, n, inner)
    }

    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        layout::permute(self, x, perm)
    }

    fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        layout::concat(self, xs, dim)
    }

    fn slice(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        layout::slice(self, x, dim, start, len)
    }

    fn pad_slice(&self, x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor> {
        layout::pad_slice(self, x, dim, start, full)
    }

    fn index_rows(&self, table: &Tensor, ids: &Table) -> Result<Tensor> {
        layout::index_rows(self, table, ids)
    }

    fn index_rows_backward(&self, dy: &Tensor, ids: &Table, rows: usize) -> Result<Tensor> {
        layout::index_rows_backward(self, dy, ids, rows)
    }

    fn layer_norm(&self, x: &Tensor, residual: Option<&Tensor>, affine: &LnAffine, eps: f64) -> Result<LayerNormOut> {
        layernorm::layer_norm(self, x, residual, affine, eps)
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
        layernorm::layer_norm_backward(self, input, affine, mean, rstd, dy, dx_plus)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        elementwise::softmax(self, x)
    }

    fn softmax_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        elementwise::softmax_backward(self, y, dy)
    }

    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        elementwise::l2_normalize(self, x, eps)
    }

    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
        elementwise::l2_normalize_backward(self, y, norm, dy, eps)
    }

    fn attention(&self, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
        attention::attention(self, qkv, heads, mask)
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
        attention::attention_backward(self, qkv, out, lse, dout, heads, mask)
    }

    fn infonce(&self, pairs: InfoNceShard<'_>) -> Result<InfoNceOut> {
        infonce::infonce(self, pairs)
    }

    fn infonce_partial(&self, shard: InfoNceShard<'_>) -> Result<InfoNcePartial> {
        infonce::infonce_partial(self, shard)
    }

    fn infonce_finish(&self, partial: &InfoNcePartial, col_partials: &Tensor) -> Result<InfoNceOut> {
        infonce::infonce_finish(self, partial, col_partials)
    }

    fn infonce_backward(
        &self,
        shard: InfoNceShard<'_>,
        out: &InfoNceOut,
        dloss: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        infonce::infonce_backward(self, shard, out, dloss)
    }

    fn cross_entropy(&self, logits: &Tensor, targets: &Table) -> Result<(Tensor, Tensor)> {
        loss::cross_entropy(self, logits, targets)
    }

    fn cross_entropy_backward(&self, logits: &Tensor, lse: &Tensor, targets: &Table, dloss: &Tensor) -> Result<Tensor> {
        loss::cross_entropy_backward(self, logits, lse, targets, dloss)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
        conv::conv2d(self, x, w, geo)
    }

    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        geo: Conv2dGeometry,
        need_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor)> {
        conv::conv2d_backward(self, x, w, dy, geo, need_dx)
    }

    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormOut> {
        batchnorm::batch_norm_train(self, x, gamma, beta, eps, relu)
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
        batchnorm::batch_norm_eval(self, x, gamma, beta, mean, var, eps, relu)
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
        batchnorm::batch_norm_backward(self, x, gamma, mean, var, affine, dy, eps, batch_stats, relu)
    }

    fn adamw_multi(&self, tensors: &mut [AdamWTensor<'_>], hp: AdamWStep) -> Result<Tensor> {
        adamw::adamw_multi(self, tensors, hp)
    }

    fn ema_update(&self, targets: &mut [&mut Tensor], sources: &[&Tensor], weight: f64) -> Result<()> {
        ema::ema_update(self, targets, sources, weight)
    }
}
