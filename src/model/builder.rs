//! Declaring a model's parameters before any memory exists. Modules register a
//! [`ParamSpec`] per tensor (name, shape, init, which modality owns it); the specs alone give
//! the parameter counts of the 132M-parameter presets instantly, and [`ModelSpec::materialize`]
//! turns them into tensors in registration order.

use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::tensor::{DType, Device, Rng, Tensor};

/// Which part of the model a parameter belongs to, for the counts MS-CLIP reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Used by both the image and the text tower.
    Shared,
    Vision,
    Text,
    /// Neither tower: the logit scale.
    Joint,
}

/// Initial value distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    /// N(0, std^2).
    Normal(f64),
    /// U(-bound, bound).
    Uniform(f64),
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    pub role: Role,
}

/// Handle to a non-trainable state tensor (BatchNorm running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferId(usize);

/// Non-trainable state, saved in checkpoints beside the parameters.
#[derive(Debug, Clone, Default)]
pub struct Buffers {
    names: Vec<String>,
    tensors: Vec<Tensor>,
}

impl Buffers {
    pub fn get(&self, id: BufferId) -> &Tensor {
        &self.tensors[id.0]
    }

    pub fn set(&mut self, id: BufferId, value: Tensor) {
        self.tensors[id.0] = value;
    }

    /// Every value in registration order, for a caller that replaces them in place.
    pub fn values_mut(&mut self) -> &mut [Tensor] {
        &mut self.tensors
    }

    /// (name, value) pairs in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    pub fn find(&self, name: &str) -> Option<BufferId> {
        self.names.iter().position(|n| n == name).map(BufferId)
    }

    /// Moves every buffer to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for t in &mut self.tensors {
            *t = t.to_device(device)?;
        }
        Ok(())
    }
}

/// Every parameter and buffer of a model, as declared by its modules.
#[derive(Debug, Default)]
pub struct ModelSpec {
    pub params: Vec<ParamSpec>,
    buffers: Vec<(String, Vec<usize>, f64)>,
}

impl ModelSpec {
    pub fn param(&mut self, name: impl Into<String>, shape: &[usize], init: Init, role: Role) -> ParamId {
        self.params.push(ParamSpec { name: name.into(), shape: shape.to_vec(), init, role });
        ParamId::from_index(self.params.len() - 1)
    }

    /// A buffer filled with `value`.
    pub fn buffer(&mut self, name: impl Into<String>, shape: &[usize], value: f64) -> BufferId {
        self.buffers.push((name.into(), shape.to_vec(), value));
        BufferId(self.buffers.len() - 1)
    }

    /// The role of a parameter.
    pub fn role(&self, id: ParamId) -> Role {
        self.params[id.index()].role
    }

    /// (name, shape) of every buffer, in registration order.
    pub fn buffer_shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.buffers.iter().map(|(name, shape, _)| (name.as_str(), shape.as_slice()))
    }

    /// Creates every tensor, drawing initial values from `rng` in registration order.
    pub fn materialize(&self, rng: &mut Rng, dtype: DType) -> Result<(ParamStore, Buffers)> {
        let mut store = ParamStore::new();
        for spec in &self.params {
            let tensor = match spec.init {
                Init::Zeros => Tensor::zeros(spec.shape.clone(), dtype),
                Init::Ones => Tensor::full(spec.shape.clone(), 1.0, dtype),
                Init::Constant(c) => Tensor::full(spec.shape.clone(), c, dtype),
                Init::Normal(std) => rng.normal_tensor(spec.shape.clone(), std, dtype),
                Init::Uniform(bound) => rng.uniform_tensor(spec.shape.clone(), bound, dtype),
            };
            store.add(spec.name.clone(), tensor)?;
        }
        let mut buffers = Buffers::default();
        for (name, shape, value) in &self.buffers {
            buffers.names.push(name.clone());
            buffers.tensors.push(Tensor::full(shape.clone(), *value, dtype));
        }
        Ok((store, buffers))
    }
}
