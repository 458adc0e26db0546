//! Matrix products: `matmul` (2-D or batched 3-D) and `linear` (x W^T + b, PyTorch layout).

use super::fusion::{self, Fusion};
use super::{be, check_rank, check_same_kind};
use crate::autograd::record1;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

impl Tensor {
    /// `self @ other` for [m, k] @ [k, n] or batched [b, m, k] @ [b, k, n].
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        check_same_kind(OP, &[self, other])?;
        check_rank(OP, "lhs", self, &[2, 3])?;
        if self.rank() != other.rank() {
            return Err(Error::shape(OP, format!("{} @ {}: ranks differ", self.shape(), other.shape())));
        }
        let batched = self.rank() == 3;
        let a = as_batched(self)?;
        let b = as_batched(other)?;
        let (ad, bd) = (a.dims(), b.dims());
        if ad[0] != bd[0] || ad[2] != bd[1] {
            return Err(Error::shape(OP, format!("{} @ {}", self.shape(), other.shape())));
        }
        let y = be(self).matmul(&a, &b, false, false, None)?;
        super::flops::gemm(ad[0], ad[1], bd[2], ad[2]);
        let y = if batched { y } else { y.view_as(Shape::new([ad[1], bd[2]]))? };
        let (a_saved, b_saved) = (a.clone(), b.clone());
        let (a_shape, b_shape) = (self.shape().clone(), other.shape().clone());
        Ok(record1(OP, &[self, other], y, move |dy, needs| {
            let dy = as_batched(dy)?;
            let backend = be(&dy);
            let da = match needs[0] {
                true => Some(backend.matmul(&dy, &b_saved, false, true, None)?.view_as(a_shape)?),
                false => None,
            };
            let db = match needs[1] {
                true => Some(backend.matmul(&a_saved, &dy, true, false, None)?.view_as(b_shape)?),
                false => None,
            };
            Ok(vec![da, db])
        }))
    }

    /// `self @ weight^T + bias` over the last dimension: self [.., in], weight [out, in],
    /// bias [out]. The layout of torch.nn.Linear.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        let mut operands = vec![self, weight];
        operands.extend(bias);
        check_same_kind(OP, &operands)?;
        check_rank(OP, "weight", weight, &[2])?;
        let (out_f, in_f) = (weight.dims()[0], weight.dims()[1]);
        if self.rank() == 0 || self.shape().last() != in_f {
            return Err(Error::shape(OP, format!("input {} against weight {}", self.shape(), weight.shape())));
        }
        if let Some(b) = bias.filter(|b| b.dims() != [out_f]) {
            return Err(Error::shape(OP, format!("bias {} for weight {}", b.shape(), weight.shape())));
        }
        let rows = self.shape().rows();
        let x2 = self.view_as(Shape::new([1, rows, in_f]))?;
        let w3 = weight.view_as(Shape::new([1, out_f, in_f]))?;
        let y = be(self).matmul(&x2, &w3, false, true, bias)?;
        super::flops::gemm(1, rows, out_f, in_f);
        let mut out_dims = self.dims().to_vec();
        *out_dims.last_mut().expect("rank checked above") = out_f;
        let y = y.view_as(Shape::new(out_dims))?;

        let x_shape = self.shape().clone();
        let has_bias = bias.is_some();
        Ok(record1(OP, &operands, y, move |dy, needs| {
            let backend = be(dy);
            let dy3 = dy.view_as(Shape::new([1, rows, out_f]))?;
            let dx = match needs[0] {
                true => Some(backend.matmul(&dy3, &w3, false, false, None)?.view_as(x_shape)?),
                false => None,
            };
            let dw_shape = Shape::new([out_f, in_f]);
            // The bias gradient (dy's column sums) inside the weight gradient's GEMM when both
            // are needed; else each on its own.
            if has_bias && needs[1] && needs[2] && !fusion::is_off(Fusion::BiasGrad) {
                let (dw, db) = backend.matmul_bias_grad(&dy3, &x2, true, false)?;
                return Ok(vec![dx, Some(dw.view_as(dw_shape)?), Some(db)]);
            }
            let dw = match needs[1] {
                true => Some(backend.matmul(&dy3, &x2, true, false, None)?.view_as(dw_shape)?),
                false => None,
            };
            let mut grads = vec![dx, dw];
            if has_bias {
                grads.push(match needs[2] {
                    true => Some(backend.sum_middle(&dy3, 1, rows, out_f)?.view_as(Shape::new([out_f]))?),
                    false => None,
                });
            }
            Ok(grads)
        }))
    }
}

/// A rank-2 [m, k] tensor viewed as [1, m, k]; rank-3 tensors as they are.
fn as_batched(t: &Tensor) -> Result<Tensor> {
    match t.dims() {
        &[m, k] => t.view_as(Shape::new([1, m, k])),
        _ => Ok(t.clone()),
    }
}
