//! Normalisations: LayerNorm (plain and fused with the residual add), softmax, L2
//! normalisation and BatchNorm2d.

use super::fusion::{self, Fusion};
use super::{be, check_rank, check_same_kind};
use crate::autograd::{record, record1};
use crate::backend::{LayerNormGrads, LayerNormOut, LnAffine};
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

/// Checks a LayerNorm's input and the gamma and beta of each of its row segments.
fn check_layer_norm(op: &'static str, x: &Tensor, affine: &LnAffine) -> Result<()> {
    check_rank(op, "input", x, &[1, 2, 3, 4])?;
    let width = x.shape().last();
    check_affine(op, x, &affine.gamma, &affine.beta, width)?;
    if let Some(second) = &affine.second {
        check_affine(op, x, &second.gamma, &second.beta, width)?;
        let rows = x.shape().rows();
        if second.first_row > rows {
            let detail = format!("the second segment starts at row {} of {rows} ({})", second.first_row, x.shape());
            return Err(Error::index(op, detail));
        }
    }
    Ok(())
}

/// The tape inputs of a LayerNorm's affine parameters, in the order its backward returns their
/// gradients: gamma, beta, then the second segment's.
fn affine_inputs(affine: &LnAffine) -> Vec<&Tensor> {
    let mut inputs = vec![&affine.gamma, &affine.beta];
    if let Some(second) = &affine.second {
        inputs.extend([&second.gamma, &second.beta]);
    }
    inputs
}

/// The gradients of `affine_inputs`, or None for each when the output had no gradient.
fn affine_grads(grads: Option<&LayerNormGrads>, affine: &LnAffine) -> Vec<Option<Tensor>> {
    let Some(grads) = grads else { return vec![None; affine_inputs(affine).len()] };
    let mut out = vec![Some(grads.dgamma.clone()), Some(grads.dbeta.clone())];
    if let Some((dgamma, dbeta)) = &grads.second {
        out.extend([Some(dgamma.clone()), Some(dbeta.clone())]);
    }
    out
}

impl Tensor {
    /// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        self.layer_norm_segments(&LnAffine::new(gamma, beta), eps)
    }

    /// LayerNorm with a gamma and beta per row segment of `affine`: one op (one launch on a GPU)
    /// for the image and text rows of a modality-fused layer.
    pub fn layer_norm_segments(&self, affine: &LnAffine, eps: f64) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        check_layer_norm(OP, self, affine)?;
        let LayerNormOut { y, mean, rstd, .. } = be(self).layer_norm(self, None, affine, eps)?;
        let mut inputs = vec![self];
        inputs.extend(affine_inputs(affine));
        let (x, saved) = (self.clone(), affine.clone());
        Ok(record1(OP, &inputs, y, move |dy, _| {
            let grads = be(dy).layer_norm_backward(&x, &saved, &mean, &rstd, dy, None)?;
            let mut out = vec![Some(grads.dx.clone())];
            out.extend(affine_grads(Some(&grads), &saved));
            Ok(out)
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
        self.add_layer_norm_segments(residual, &LnAffine::new(gamma, beta), eps)
    }

    /// [`Tensor::add_layer_norm`] with a gamma and beta per row segment of `affine`.
    pub fn add_layer_norm_segments(&self, residual: &Tensor, affine: &LnAffine, eps: f64) -> Result<(Tensor, Tensor)> {
        const OP: &str = "add_layer_norm";
        if self.shape() != residual.shape() {
            return Err(Error::shape(OP, format!("input {} and residual {}", self.shape(), residual.shape())));
        }
        check_layer_norm(OP, self, affine)?;
        check_same_kind(OP, &[self, residual])?;
        if fusion::is_off(Fusion::ResidualLayerNorm) {
            let sum = self.add(residual)?;
            let y = sum.layer_norm_segments(affine, eps)?;
            return Ok((sum, y));
        }
        let out = be(self).layer_norm(self, Some(residual), affine, eps)?;
        let sum = out.sum.expect("a residual was given");
        let (saved_sum, saved, mean, rstd) = (sum.clone(), affine.clone(), out.mean, out.rstd);
        let mut inputs = vec![self, residual];
        inputs.extend(affine_inputs(affine));
        let mut outs = record(OP, &inputs, vec![sum, out.y], move |grads, _| {
            // Both outputs flow back into the sum: d sum = (direct) + LayerNorm backward, the
            // direct gradient added inside the LayerNorm's backward kernel.
            let direct = grads[0].as_ref();
            let norm_grads = match &grads[1] {
                Some(dy) => Some(be(&saved_sum).layer_norm_backward(&saved_sum, &saved, &mean, &rstd, dy, direct)?),
                None => None,
            };
            let dsum = norm_grads.as_ref().map(|g| g.dx.clone()).or_else(|| direct.cloned());
            let mut out = vec![dsum.clone(), dsum];
            out.extend(affine_grads(norm_grads.as_ref(), &saved));
            Ok(out)
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
    batch_norm_then(x, [gamma, beta], eps, mode, false)
}

/// `relu(batch_norm2d(..))` in one op: the forward writes the activated output and the
/// backward masks the gradient itself, so the ReLU makes no pass over the tensor of its own
/// (the conv stem and the parallel branch put a ReLU after most of their BatchNorms).
pub fn batch_norm_relu2d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    mode: BatchNormMode,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    if fusion::is_off(Fusion::BatchNormRelu) {
        let (y, stats) = batch_norm2d(x, gamma, beta, eps, mode)?;
        return Ok((y.relu()?, stats));
    }
    batch_norm_then(x, [gamma, beta], eps, mode, true)
}

/// BatchNorm2d, followed by a fused ReLU if `relu`.
fn batch_norm_then(
    x: &Tensor,
    [gamma, beta]: [&Tensor; 2],
    eps: f64,
    mode: BatchNormMode,
    relu: bool,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    const OP: &str = "batch_norm2d";
    check_rank(OP, "input", x, &[4])?;
    let channels = x.dims()[1];
    check_affine(OP, x, gamma, beta, channels)?;
    let (out, batch_stats) = match mode {
        BatchNormMode::Train => (be(x).batch_norm_train(x, gamma, beta, eps, relu)?, true),
        BatchNormMode::Eval { mean, var } => {
            check_affine(OP, x, mean, var, channels)?;
            (be(x).batch_norm_eval(x, gamma, beta, mean, var, eps, relu)?, false)
        }
    };
    let (xs, g, m, v, affine) = (x.clone(), gamma.clone(), out.mean.clone(), out.var.clone(), out.affine);
    let y = record1(OP, &[x, gamma, beta], out.y, move |dy, _| {
        let (dx, dg, db) = be(dy).batch_norm_backward(&xs, &g, &m, &v, &affine, dy, eps, batch_stats, relu)?;
        Ok(vec![Some(dx), Some(dg), Some(db)])
    });
    Ok((y, batch_stats.then_some((out.mean, out.var))))
}
