//! The parameter registry. A model holds [`ParamId`]s, not tensors; the store owns the
//! tensors and their names (the names checkpoints will use). A weight shared by the image and
//! text towers is one entry used by both, so its gradient is the sum of both uses.

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// Handle to one parameter of a [`ParamStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(usize);

impl ParamId {
    /// The id the `index`-th parameter added to a store receives.
    pub fn from_index(index: usize) -> Self {
        ParamId(index)
    }

    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    names: Vec<String>,
    tensors: Vec<Tensor>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a trainable tensor under a unique name.
    pub fn add(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<ParamId> {
        let name = name.into();
        if self.find(&name).is_some() {
            return Err(Error::invalid("param_store", format!("a parameter named {name:?} exists already")));
        }
        self.names.push(name);
        self.tensors.push(tensor.detach().set_requires_grad(true));
        Ok(ParamId(self.tensors.len() - 1))
    }

    /// The current value of a parameter (it changes identity after each optimizer step).
    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.tensors[id.0]
    }

    /// Replaces a parameter's value (a checkpoint restore); shape and dtype must match.
    pub fn set(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let old = &self.tensors[id.0];
        if old.shape() != value.shape() || old.dtype() != value.dtype() {
            return Err(Error::shape(
                "param_store",
                format!(
                    "{}: {} {} cannot take a {} {}",
                    self.names[id.0],
                    old.dtype(),
                    old.shape(),
                    value.dtype(),
                    value.shape()
                ),
            ));
        }
        self.tensors[id.0] = value.detach().set_requires_grad(true);
        Ok(())
    }

    /// Every parameter, mutably, in id order (for an optimizer's multi-tensor update).
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, Tensor> {
        self.tensors.iter_mut()
    }

    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.0]
    }

    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.names.iter().position(|n| n == name).map(ParamId)
    }

    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.tensors.len()).map(ParamId)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Where the parameters live (the CPU for an empty store).
    pub fn device(&self) -> Device {
        self.tensors.first().map_or(Device::Cpu, Tensor::device)
    }

    /// Moves every parameter to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for t in &mut self.tensors {
            *t = t.to_device(device)?.detach().set_requires_grad(true);
        }
        Ok(())
    }

    /// A store of the same names holding `value(id, current)` for each parameter.
    pub(super) fn with_values(&self, value: impl Fn(ParamId, &Tensor) -> Tensor) -> ParamStore {
        let tensors = self.ids().map(|id| value(id, self.get(id))).collect();
        ParamStore { names: self.names.clone(), tensors }
    }

    /// The parameters as `dtype` for computing (mixed precision): each cast is recorded on the
    /// tape, so gradients reach the masters in their own dtype. Parameters for which `keep`
    /// holds stay as they are (the logit scale, whose exp needs fp32).
    pub fn cast_for_compute(&self, dtype: DType, keep: impl Fn(ParamId) -> bool) -> Result<ParamStore> {
        let tensors = self
            .ids()
            .map(|id| if keep(id) { Ok(self.get(id).clone()) } else { self.get(id).to_dtype(dtype) })
            .collect::<Result<_>>()?;
        Ok(ParamStore { names: self.names.clone(), tensors })
    }

    /// Total number of trainable elements.
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }
}
