//! The CPU reference backend: plain Rust on host slices, f32 or f64, rows spread over
//! rayon's threads. It is the oracle every GPU kernel is tested against, so clarity wins
//! over speed everywhere except matmul (the `gemm` crate).
//!
//! Determinism: every reduction runs in a fixed order inside one task (rows are split across
//! threads, the elements of one sum never are), so results do not depend on scheduling.

mod adamw;
mod attention;
mod batchnorm;
pub(crate) mod conv;
mod elementwise;
mod ema;
mod lanes;
mod layout;
mod loss;
pub(crate) mod matmul;
mod norm;

use crate::backend::{
    Activation, AdamWStep, AdamWTensor, AttnMask, Backend, BatchNormOut, BinaryOp, Conv2dGeometry, InfoNceOut,
    InfoNcePartial, InfoNceShard, LayerNormGrads, LayerNormOut, LnAffine, UnaryOp,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Table, Tensor};

/// Calls the generic implementation `f::<T>` that matches the dtype, or fails for dtypes
/// the CPU does not compute in.
macro_rules! float_dispatch {
    ($op:literal, $dtype:expr, $($f:ident)::+ ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            DType::F32 => $($f)::+::<f32>($($arg),*),
            DType::F64 => $($f)::+::<f64>($($arg),*),
            other => Err(Error::dtype($op, format!("the CPU backend computes in f32 or f64, not {other}"))),
        }
    };
}

/// The CPU backend (stateless; threads come from rayon's global pool).
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        elementwise::cast(x, dtype)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor> {
        float_dispatch!("matmul", a.dtype(), matmul::matmul(a, b, trans_a, trans_b, bias))
    }

    fn matmul_bias_grad(&self, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Tensor, Tensor)> {
        super::matmul_then_row_sums(self, a, b, trans_a, trans_b)
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        float_dispatch!("binary", a.dtype(), elementwise::binary(op, a, b))
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        float_dispatch!("unary", x.dtype(), elementwise::unary(op, x))
    }

    fn unary_backward(&self, op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        float_dispatch!("unary_backward", x.dtype(), elementwise::unary_backward(op, x, y, dy))
    }

    fn bias_activation(&self, x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
        float_dispatch!("bias_activation", x.dtype(), elementwise::bias_activation(x, bias, act))
    }

    fn bias_activation_backward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        dy: &Tensor,
        act: Activation,
    ) -> Result<(Tensor, Tensor)> {
        float_dispatch!("bias_activation_backward", x.dtype(), elementwise::bias_activation_backward(x, bias, dy, act))
    }

    fn sum_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
        float_dispatch!("sum", x.dtype(), layout::sum_middle(x, outer, n, inner))
    }

    fn repeat_middle(&self, x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<Tensor> {
        float_dispatch!("repeat", x.dtype(), layout::repeat_middle(x, outer, n, inner))
    }

    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        float_dispatch!("permute", x.dtype(), layout::permute(x, perm))
    }

    fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        let dtype = xs.first().map(|t| t.dtype()).unwrap_or(DType::F32);
        float_dispatch!("concat", dtype, layout::concat(xs, dim))
    }

    fn slice(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        float_dispatch!("slice", x.dtype(), layout::slice(x, dim, start, len))
    }

    fn pad_slice(&self, x: &Tensor, dim: usize, start: usize, full: usize) -> Result<Tensor> {
        float_dispatch!("pad_slice", x.dtype(), layout::pad_slice(x, dim, start, full))
    }

    fn index_rows(&self, table: &Tensor, ids: &Table) -> Result<Tensor> {
        float_dispatch!("index_rows", table.dtype(), layout::index_rows(table, &ids.words()))
    }

    fn index_rows_backward(&self, dy: &Tensor, ids: &Table, rows: usize) -> Result<Tensor> {
        float_dispatch!("index_rows_backward", dy.dtype(), layout::index_rows_backward(dy, &ids.words(), rows))
    }

    fn layer_norm(&self, x: &Tensor, residual: Option<&Tensor>, affine: &LnAffine, eps: f64) -> Result<LayerNormOut> {
        float_dispatch!("layer_norm", x.dtype(), norm::layer_norm(x, residual, affine, eps))
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
        float_dispatch!(
            "layer_norm_backward",
            input.dtype(),
            norm::layer_norm_backward(input, affine, mean, rstd, dy, dx_plus)
        )
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        float_dispatch!("softmax", x.dtype(), norm::softmax(x))
    }

    fn softmax_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        float_dispatch!("softmax_backward", y.dtype(), norm::softmax_backward(y, dy))
    }

    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        float_dispatch!("l2_normalize", x.dtype(), norm::l2_normalize(x, eps))
    }

    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
        float_dispatch!("l2_normalize_backward", y.dtype(), norm::l2_normalize_backward(y, norm, dy, eps))
    }

    fn attention(&self, qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
        float_dispatch!("attention", qkv.dtype(), attention::forward(qkv, heads, mask))
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
        float_dispatch!("attention_backward", qkv.dtype(), attention::backward(qkv, out, lse, dout, heads, mask))
    }

    fn infonce(&self, pairs: InfoNceShard<'_>) -> Result<InfoNceOut> {
        pairs.check_whole("infonce")?;
        float_dispatch!("infonce", pairs.img.dtype(), loss::infonce(pairs))
    }

    fn infonce_partial(&self, shard: InfoNceShard<'_>) -> Result<InfoNcePartial> {
        shard.check("infonce_partial")?;
        float_dispatch!("infonce_partial", shard.img.dtype(), loss::infonce_partial(shard))
    }

    fn infonce_finish(&self, partial: &InfoNcePartial, col_partials: &Tensor) -> Result<InfoNceOut> {
        partial.check_gathered("infonce_finish", col_partials)?;
        float_dispatch!("infonce_finish", partial.dtype, loss::infonce_finish(partial, col_partials))
    }

    fn infonce_backward(
        &self,
        shard: InfoNceShard<'_>,
        out: &InfoNceOut,
        dloss: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        shard.check("infonce_backward")?;
        float_dispatch!("infonce_backward", shard.img.dtype(), loss::infonce_backward(shard, out, dloss))
    }

    fn cross_entropy(&self, logits: &Tensor, targets: &Table) -> Result<(Tensor, Tensor)> {
        float_dispatch!("cross_entropy", logits.dtype(), loss::cross_entropy(logits, targets))
    }

    fn cross_entropy_backward(&self, logits: &Tensor, lse: &Tensor, targets: &Table, dloss: &Tensor) -> Result<Tensor> {
        float_dispatch!(
            "cross_entropy_backward",
            logits.dtype(),
            loss::cross_entropy_backward(logits, lse, targets, dloss)
        )
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, geo: Conv2dGeometry) -> Result<Tensor> {
        float_dispatch!("conv2d", x.dtype(), conv::forward(x, w, geo))
    }

    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        geo: Conv2dGeometry,
        need_dx: bool,
    ) -> Result<(Option<Tensor>, Tensor)> {
        float_dispatch!("conv2d_backward", x.dtype(), conv::backward(x, w, dy, geo, need_dx))
    }

    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormOut> {
        float_dispatch!("batch_norm", x.dtype(), batchnorm::forward_train(x, gamma, beta, eps, relu))
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
        float_dispatch!("batch_norm", x.dtype(), batchnorm::forward_eval(x, gamma, beta, mean, var, eps, relu))
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
        float_dispatch!(
            "batch_norm_backward",
            x.dtype(),
            batchnorm::backward(x, gamma, mean, var, affine, dy, eps, batch_stats, relu)
        )
    }

    fn adamw_multi(&self, tensors: &mut [AdamWTensor<'_>], hp: AdamWStep) -> Result<Tensor> {
        adamw::step_all(tensors, hp)
    }

    fn ema_update(&self, targets: &mut [&mut Tensor], sources: &[&Tensor], weight: f64) -> Result<()> {
        ema::update_all(targets, sources, weight)
    }
}
