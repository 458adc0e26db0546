//! Sums and means.

use super::{be, check_dim};
use crate::autograd::record1;
use crate::error::Result;
use crate::tensor::{Shape, Tensor};

impl Tensor {
    /// Sum of every element, shape [1].
    pub fn sum_all(&self) -> Result<Tensor> {
        let flat = self.view_as(Shape::new([1, self.numel(), 1]))?;
        let y = be(self).sum_middle(&flat, 1, self.numel(), 1)?.view_as(Shape::new([1]))?;
        let shape = self.shape().clone();
        let n = self.numel();
        Ok(record1("sum_all", &[self], y, move |dy, _| {
            Ok(vec![Some(be(dy).repeat_middle(dy, 1, n, 1)?.view_as(shape)?)])
        }))
    }

    /// Mean of every element, shape [1].
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.scale(1.0 / self.numel().max(1) as f64)
    }

    /// Sum over dimension `dim`, which is removed from the shape.
    pub fn sum_dim(&self, dim: usize) -> Result<Tensor> {
        check_dim("sum_dim", self, dim)?;
        let (outer, n, inner) = self.shape().split_at_dim(dim);
        let mut dims = self.dims().to_vec();
        dims.remove(dim);
        let y = be(self).sum_middle(self, outer, n, inner)?.view_as(Shape::new(dims))?;
        let shape = self.shape().clone();
        Ok(record1("sum_dim", &[self], y, move |dy, _| {
            Ok(vec![Some(be(dy).repeat_middle(dy, outer, n, inner)?.view_as(shape)?)])
        }))
    }

    /// Mean over dimension `dim`, which is removed from the shape.
    pub fn mean_dim(&self, dim: usize) -> Result<Tensor> {
        check_dim("mean_dim", self, dim)?;
        let n = self.dims()[dim];
        self.sum_dim(dim)?.scale(1.0 / n.max(1) as f64)
    }
}
