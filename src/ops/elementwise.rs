//! Element-wise arithmetic and activations.

use super::fusion::{self, Fusion};
use super::{be, check_same_kind};
use crate::autograd::record1;
use crate::backend::{Activation, BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

impl Tensor {
    /// `self + other`, equal shapes.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary("add", BinaryOp::Add, self, other, false)
    }

    /// `self - other`, equal shapes.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary("sub", BinaryOp::Sub, self, other, false)
    }

    /// `self * other`, equal shapes.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary("mul", BinaryOp::Mul, self, other, false)
    }

    /// `self + other` where `other`'s shape is the trailing part of `self`'s (a positional
    /// embedding added to every batch element, a bias added to every row).
    pub fn add_broadcast(&self, other: &Tensor) -> Result<Tensor> {
        binary("add_broadcast", BinaryOp::Add, self, other, true)
    }

    /// `self * other` with `other` repeated over the leading dimensions, as `add_broadcast`.
    pub fn mul_broadcast(&self, other: &Tensor) -> Result<Tensor> {
        binary("mul_broadcast", BinaryOp::Mul, self, other, true)
    }

    pub fn scale(&self, factor: f64) -> Result<Tensor> {
        unary("scale", UnaryOp::Scale(factor), self)
    }

    pub fn exp(&self) -> Result<Tensor> {
        unary("exp", UnaryOp::Exp, self)
    }

    pub fn ln(&self) -> Result<Tensor> {
        unary("ln", UnaryOp::Ln, self)
    }

    pub fn relu(&self) -> Result<Tensor> {
        unary("relu", UnaryOp::Relu, self)
    }

    /// `x * sigmoid(1.702 x)`.
    pub fn quick_gelu(&self) -> Result<Tensor> {
        unary("quick_gelu", UnaryOp::QuickGelu, self)
    }

    /// The exact GELU, `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` (torch.nn.GELU).
    pub fn gelu(&self) -> Result<Tensor> {
        unary("gelu", UnaryOp::Gelu, self)
    }

    /// `act(self)`.
    pub fn activation(&self, act: Activation) -> Result<Tensor> {
        match act {
            Activation::QuickGelu => self.quick_gelu(),
            Activation::Gelu => self.gelu(),
        }
    }

    /// `quick_gelu(self + bias)`: [`Tensor::bias_activation`] with QuickGELU.
    pub fn bias_quick_gelu(&self, bias: &Tensor) -> Result<Tensor> {
        self.bias_activation(bias, Activation::QuickGelu)
    }

    /// `act(self + bias)` with `bias` [width] added to every row of `self` [.., width]: the MLP
    /// activation fused with the bias before it (one kernel on the GPU).
    pub fn bias_activation(&self, bias: &Tensor, act: Activation) -> Result<Tensor> {
        let op = act.bias_op();
        check_same_kind(op, &[self, bias])?;
        if self.rank() == 0 || bias.rank() != 1 || self.shape().last() != bias.numel() {
            return Err(Error::shape(
                op,
                format!("bias {} for input {}: bias must be [last dim]", bias.shape(), self.shape()),
            ));
        }
        if fusion::is_off(Fusion::BiasGelu) {
            return self.add_broadcast(bias)?.activation(act);
        }
        let y = be(self).bias_activation(self, bias, act)?;
        let (x_saved, bias_saved) = (self.clone(), bias.clone());
        Ok(record1(op, &[self, bias], y, move |dy, needs| {
            let (dx, dbias) = be(dy).bias_activation_backward(&x_saved, &bias_saved, dy, act)?;
            Ok(vec![needs[0].then_some(dx), needs[1].then_some(dbias)])
        }))
    }

    /// The same values in another dtype; the gradient is cast back. Casting to the tensor's own
    /// dtype returns it unchanged.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let from = self.dtype();
        if from == dtype {
            return Ok(self.clone());
        }
        let y = be(self).cast(self, dtype)?;
        Ok(record1("to_dtype", &[self], y, move |dy, _| Ok(vec![Some(be(dy).cast(dy, from)?)])))
    }
}

fn binary(op: &'static str, kind: BinaryOp, a: &Tensor, b: &Tensor, broadcast: bool) -> Result<Tensor> {
    check_same_kind(op, &[a, b])?;
    let ok = if broadcast { a.shape().ends_with(b.shape()) } else { a.shape() == b.shape() };
    if !ok {
        let rule = if broadcast { "rhs must equal the trailing dims of lhs" } else { "shapes must be equal" };
        return Err(Error::shape(op, format!("{} and {}: {rule}", a.shape(), b.shape())));
    }
    let y = be(a).binary(kind, a, b)?;
    let (a_saved, b_saved) = (a.clone(), b.clone());
    Ok(record1(op, &[a, b], y, move |dy, needs| {
        let backend = be(dy);
        let (repeat, period) = (a_saved.numel() / b_saved.numel().max(1), b_saved.numel());
        // The gradient of a repeated operand is summed over its repeats.
        let reduce = |g: Tensor| -> Result<Tensor> {
            if repeat == 1 {
                return Ok(g);
            }
            backend.sum_middle(&g, 1, repeat, period)?.view_as(b_saved.shape().clone())
        };
        let da = needs[0]
            .then(|| match kind {
                BinaryOp::Mul => backend.binary(BinaryOp::Mul, dy, &b_saved),
                BinaryOp::Add | BinaryOp::Sub => Ok(dy.clone()),
            })
            .transpose()?;
        let db = needs[1]
            .then(|| {
                reduce(match kind {
                    BinaryOp::Add => dy.clone(),
                    BinaryOp::Sub => backend.unary(UnaryOp::Scale(-1.0), dy)?,
                    BinaryOp::Mul => backend.binary(BinaryOp::Mul, dy, &a_saved)?,
                })
            })
            .transpose()?;
        Ok(vec![da, db])
    }))
}

fn unary(op: &'static str, kind: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let y = be(x).unary(kind, x)?;
    let (x_saved, y_saved) = (x.clone(), y.clone());
    Ok(record1(op, &[x], y, move |dy, _| Ok(vec![Some(be(dy).unary_backward(kind, &x_saved, &y_saved, dy)?)])))
}
