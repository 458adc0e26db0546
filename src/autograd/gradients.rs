//! The result of a backward pass: one gradient per tensor id.

use std::collections::HashMap;

use crate::error::Result;
use crate::tensor::{Tensor, TensorId};

#[derive(Default, Debug)]
pub struct Gradients {
    by_id: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient of `t`, if `t` required grad and the loss depends on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.by_id.get(&t.id())
    }

    /// The gradient of the tensor with id `id`, as [`Gradients::get`].
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.by_id.get(&id)
    }

    /// Replaces the gradient of `t` (data-parallel training sums it across ranks).
    pub fn set(&mut self, t: &Tensor, grad: Tensor) {
        self.by_id.insert(t.id(), grad);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn take(&mut self, id: TensorId) -> Option<Tensor> {
        self.by_id.remove(&id)
    }

    /// Adds `grad` to what `id` already has. The addition order is the tape order, so the
    /// result is deterministic.
    pub(super) fn accumulate(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let summed = match self.by_id.remove(&id) {
            Some(prev) => super::add_grads(&prev, &grad)?,
            None => grad,
        };
        self.by_id.insert(id, summed);
        Ok(())
    }
}
