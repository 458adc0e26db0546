//! The bf16 compute copies of fp32 master weights (mixed precision). They are cast once, then
//! rewritten by the fused AdamW in the same pass that updates the masters, so a step never
//! casts a parameter: the forward pass reads the copies, and their gradients (bf16) go
//! straight to the optimizer.

use super::{ParamId, ParamStore};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

pub struct ComputeCopies {
    /// Per parameter, in id order: its copy, or None for a parameter computed in its master's
    /// dtype (the logit scale, whose exp needs fp32).
    copies: Vec<Option<Tensor>>,
}

impl ComputeCopies {
    /// A bf16 copy of every master for which `keep` does not hold, on the masters' device.
    pub fn new(masters: &ParamStore, dtype: DType, keep: impl Fn(ParamId) -> bool) -> Result<Self> {
        if dtype != DType::BF16 {
            return Err(Error::dtype("compute copies", format!("the optimizer writes bf16 copies, not {dtype}")));
        }
        let copies = masters
            .ids()
            .map(|id| {
                let master = masters.get(id);
                (!keep(id)).then(|| Ok(master.to_dtype(dtype)?.detach().set_requires_grad(true))).transpose()
            })
            .collect::<Result<_>>()?;
        Ok(ComputeCopies { copies })
    }

    pub fn len(&self) -> usize {
        self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// The copy of a parameter, if it has one.
    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.copies[id.index()].as_ref()
    }

    /// Every slot, mutably, in id order (for the optimizer, which writes the copies).
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, Option<Tensor>> {
        self.copies.iter_mut()
    }

    /// The parameters the forward pass reads: each copy, or the master where there is none.
    /// It holds handles to the same tensors, not new values: drop it before the optimizer
    /// updates them in place, or the update would copy them first (copy-on-write).
    pub fn forward_store(&self, masters: &ParamStore) -> ParamStore {
        masters.with_values(|id, master| self.get(id).unwrap_or(master).clone())
    }
}
