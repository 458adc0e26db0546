//! Normalisations: LayerNorm (plain and fused with the residual add), softmax, L2
//! normalisation and BatchNorm2d.

use super::{be, check_rank, check_same_kind};
use crate::autograd::{record, record1};
use crate::backend::LayerNormOut;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn check_affine(op: &'static str, x: &Tensor, gamma: &Tensor, beta: &Tensor, width: usize) -> Result<()> {
    check_same_kind(op, &[x, gamma, beta])?;
    if gamma.dims() != [width] || beta.dims() != [width] {
        return Err(Error::shape(
            op,
            format!(
                "input {} needs gamma and beta of [{width}], got {} and {}",
                x.shape(),
                gamma.shape(),
                beta.shape()
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        check_rank("layer_norm", "input", self, &[1, 2, 3, 4])?;
        check_affine("layer_norm", self, gamma, beta, self.shape().last())?;
        let out = be(self).layer_norm(self, None, gamma, beta, eps)?;
        let (x, g) = (self.clone(), gamma.clone());
        let LayerNormOut { y, mean, rstd, .. } = out;
        Ok(record1("layer_norm", &[self, gamma, beta], y, move |dy, _| {
            let (dx, dg, db) = be(dy).layer_norm_backward(&x, &g, &mean, &rstd, dy)?;
            Ok(vec![Some(dx), Some(dg), Some(db)])
        }))
    }

    /// The fused pre-norm step: `sum = self + residual`, `y = LayerNorm(sum)`. Returns
    /// (sum, y): sum continues the residual stream, y feeds the next sublayer.
    pub fn add_layer_norm(
        &self,
        residual: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "add_layer_norm";
        if self.shape() != residual.shape() {
            return Err(Error::shape(OP, format!("input {} and residual {}", self.shape(), residual.shape())));
        }
        check_rank(OP, "input", self, &[1, 2, 3, 4])?;
        check_affine(OP, self, gamma, beta, self.shape().last())?;
        check_same_kind(OP, &[self, residual])?;
        let out = be(self).layer_norm(self, Some(residual), gamma, beta, eps)?;
        let sum = out.sum.expect("a residual was given");
        let (saved_sum, g, mean, rstd) = (sum.clone(), gamma.clone(), out.mean, out.rstd);
        let mut outs = record(OP, &[self, residual, gamma, beta], vec![sum, out.y], move |grads, _| {
            // Both outputs flow back into the sum: d sum = (direct) + LayerNorm backward.
            let backend = be(&saved_sum);
            let (mut dsum, dg, db) = match &grads[1] {
                Some(dy) => {
                    let (dx, dg, db) = backend.layer_norm_backward(&saved_sum, &g, &mean, &rstd, dy)?;
                    (Some(dx), Some(dg), Some(db))
                }
                None => (None, None, None),
            };
            if let Some(direct) = &grads[0] {
                dsum = Some(match dsum {
                    Some(d) => crate::autograd::add_grads(&d, direct)?,
                    None => direct.clone(),
                });
            }
            Ok(vec![dsum.clone(), dsum, dg, db])
        });
        let y = outs.pop().expect("two outputs");
        let sum = outs.pop().expect("two outputs");
        Ok((sum, y))
    }

    /// Softmax over the last dimension.
    pub fn softmax(&self) -> Result<Tensor> {
        let y = be(self).softmax(self)?;
        let saved = y.clone();
        Ok(record1("softmax", &[self], y, move |dy, _| Ok(vec![Some(be(dy).softmax_backward(&saved, dy)?)])))
    }

    /// `x / max(||x||_2, eps)` over the last dimension (torch.nn.functional.normalize).
    pub fn l2_normalize(&self, eps: f64) -> Result<Tensor> {
        let (y, norm) = be(self).l2_normalize(self, eps)?;
        let saved = y.clone();
        Ok(record1("l2_normalize", &[self], y, move |dy, _| {
            Ok(vec![Some(be(dy).l2_normalize_backward(&saved, &norm, dy, eps)?)])
        }))
    }
}

/// Which statistics BatchNorm normalises with.
pub enum BatchNormMode<'a> {
    /// The batch's own mean and (biased) variance; they are returned so the caller can
    /// update its running statistics.
    Train,
    /// Fixed statistics, normally the running mean and variance.
    Eval { mean: &'a Tensor, var: &'a Tensor },
}

/// BatchNorm2d over an NCHW tensor. In `Train` mode also returns the batch mean and biased
/// variance, per channel.
pub fn batch_norm2d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    mode: BatchNormMode,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    const OP: &str = "batch_norm2d";
    check_rank(OP, "input", x, &[4])?;
    let channels = x.dims()[1];
    check_affine(OP, x, gamma, beta, channels)?;
    let (y, mean, var, batch_stats) = match mode {
        BatchNormMode::Train => {
            let out = be(x).batch_norm_train(x, gamma, beta, eps)?;
            (out.y, out.mean, out.var, true)
        }
        BatchNormMode::Eval { mean, var } => {
            check_affine(OP, x, mean, var, channels)?;
            (be(x).batch_norm_eval(x, gamma, beta, mean, var, eps)?, mean.clone(), var.clone(), false)
        }
    };
    let (xs, g, m, v) = (x.clone(), gamma.clone(), mean.clone(), var.clone());
    let y = record1(OP, &[x, gamma, beta], y, move |dy, _| {
        let (dx, dg, db) = be(dy).batch_norm_backward(&xs, &g, &m, &v, dy, eps, batch_stats)?;
        Ok(vec![Some(dx), Some(dg), Some(db)])
    });
    Ok((y, batch_stats.then_some((mean, var))))
}
