//! The tensor value: a shape, a dtype, a device and contiguous storage.
//!
//! Storage sits behind an `Arc`, so cloning a tensor or reshaping it is cheap (a view that
//! shares the elements). Tensors are immutable from the outside; the only mutation is
//! copy-on-write through [`Tensor::storage_mut`], used by optimizers to update parameters in
//! place when nothing else holds them.

mod dtype;
mod init;
mod shape;
mod storage;
mod table;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use dtype::{DType, Real};
pub use init::Rng;
pub use shape::Shape;
pub use storage::{CpuStorage, Device, Storage};
pub use table::{Table, find_tables};

use crate::backend::gpu::GpuStorage;
use crate::error::{Error, Result};

fn not_on_host(op: &'static str, device: Device) -> Error {
    Error::Device(format!("{op}: the tensor is on {device}; copy it with to_device(Device::Cpu) first"))
}

/// Identity of a tensor value on the autograd tape. A reshape view gets its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

#[derive(Clone)]
struct Inner {
    id: TensorId,
    shape: Shape,
    storage: Arc<Storage>,
    requires_grad: bool,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(id={}, shape={}, dtype={}, device={}, requires_grad={})",
            self.0.id.0,
            self.shape(),
            self.dtype(),
            self.device(),
            self.0.requires_grad
        )
    }
}

impl Tensor {
    /// Wraps storage whose length must equal the shape's element count.
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let len = storage.len();
        if len != shape.numel() {
            return Err(Error::shape("tensor", format!("{len} elements cannot have shape {shape}")));
        }
        Ok(Tensor(Arc::new(Inner { id: TensorId::fresh(), shape, storage: Arc::new(storage), requires_grad: false })))
    }

    /// A CPU tensor owning `data`.
    pub fn from_vec<T: Real>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Self> {
        Self::from_storage(Storage::Cpu(T::into_storage(data)), shape)
    }

    /// A CPU tensor of the given dtype holding `data`, converted (round to nearest even).
    pub fn from_f64(data: &[f64], shape: impl Into<Shape>, dtype: DType) -> Result<Self> {
        Self::from_storage(Storage::Cpu(CpuStorage::from_f64_slice(dtype, data)), shape)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Self {
        let shape = shape.into();
        let storage = Storage::Cpu(CpuStorage::zeros(dtype, shape.numel()));
        Self::from_storage(storage, shape).expect("zeros: length matches by construction")
    }

    pub fn full(shape: impl Into<Shape>, value: f64, dtype: DType) -> Self {
        let shape = shape.into();
        let data = vec![value; shape.numel()];
        Self::from_f64(&data, shape, dtype).expect("full: length matches by construction")
    }

    /// A one-element tensor of shape [1].
    pub fn scalar(value: f64, dtype: DType) -> Self {
        Self::full([1], value, dtype)
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }

    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }

    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }

    pub fn dtype(&self) -> DType {
        self.storage().dtype()
    }

    pub fn device(&self) -> Device {
        self.storage().device()
    }

    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    /// Mutable storage, copied first if another tensor (a view, a saved activation on the
    /// tape) shares it: writes never show through an alias.
    /// A tensor whose header is shared gets a fresh id first, so no two different values
    /// ever carry the same id.
    pub fn storage_mut(&mut self) -> &mut Storage {
        if Arc::get_mut(&mut self.0).is_none() {
            let mut inner = (*self.0).clone();
            inner.id = TensorId::fresh();
            self.0 = Arc::new(inner);
        }
        let inner = Arc::get_mut(&mut self.0).expect("unique after the copy above");
        Arc::make_mut(&mut inner.storage)
    }

    /// The elements as a typed host slice. Fails if the dtype differs or the tensor is not
    /// on the CPU.
    pub fn cpu_slice<T: Real>(&self) -> Result<&[T]> {
        match self.storage() {
            Storage::Cpu(s) => T::slice(s)
                .ok_or_else(|| Error::dtype("cpu_slice", format!("wanted {}, tensor is {}", T::DTYPE, s.dtype()))),
            Storage::Gpu(g) => Err(not_on_host("cpu_slice", g.device())),
        }
    }

    /// Mutable typed host slice (copy-on-write, see [`Tensor::storage_mut`]).
    pub fn cpu_slice_mut<T: Real>(&mut self) -> Result<&mut [T]> {
        let dtype = self.dtype();
        match self.storage_mut() {
            Storage::Cpu(s) => T::slice_mut(s)
                .ok_or_else(|| Error::dtype("cpu_slice_mut", format!("wanted {}, tensor is {dtype}", T::DTYPE))),
            Storage::Gpu(g) => Err(not_on_host("cpu_slice_mut", g.device())),
        }
    }

    /// Every element as f64, whatever the dtype (copies to the host).
    ///
    /// # Panics
    /// If a GPU tensor cannot be copied back (the device failed after the tensor was made).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self.storage() {
            Storage::Cpu(s) => s.to_f64_vec(),
            Storage::Gpu(g) => g.to_cpu().unwrap_or_else(|e| panic!("copy {self:?} to the host: {e}")).to_f64_vec(),
        }
    }

    /// The elements on the host: borrowed when the tensor is on the CPU, copied back from a GPU
    /// device otherwise.
    pub fn host_storage(&self) -> Result<Cow<'_, CpuStorage>> {
        match self.storage() {
            Storage::Cpu(s) => Ok(Cow::Borrowed(s)),
            Storage::Gpu(g) => Ok(Cow::Owned(g.to_cpu()?)),
        }
    }

    /// A copy of this value on `device` (the same tensor when it is already there). Not
    /// recorded on the tape: move inputs and parameters before building the graph.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let host = match self.storage() {
            Storage::Cpu(s) => s.clone(),
            Storage::Gpu(g) => g.to_cpu()?,
        };
        let storage = match device {
            Device::Cpu => Storage::Cpu(host),
            gpu => Storage::Gpu(GpuStorage::from_cpu(gpu, &host)?),
        };
        Ok(Self::from_storage(storage, self.shape().clone())?.set_requires_grad(self.requires_grad()))
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape("item", format!("needs one element, shape is {}", self.shape())));
        }
        Ok(self.to_f64_vec()[0])
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// The same value marked as a leaf that collects gradients (or not). Keeps the id, so
    /// call it before the tensor is used in any op.
    pub fn set_requires_grad(self, on: bool) -> Tensor {
        let mut t = self;
        Arc::make_mut(&mut t.0).requires_grad = on;
        t
    }

    /// Its value in storage of its own (a device copy on a GPU), cut off from the tape.
    pub fn deep_copy(&self) -> Result<Tensor> {
        Tensor::from_storage(Storage::clone(self.storage()), self.shape().clone())
    }

    /// The same storage under a new id, cut off from the tape.
    pub fn detach(&self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape: self.0.shape.clone(),
            storage: self.0.storage.clone(),
            requires_grad: false,
        }))
    }

    /// A view of the same storage with another shape of the same size (no autograd record;
    /// the recorded reshape lives in `ops`).
    pub(crate) fn view_as(&self, shape: Shape) -> Result<Tensor> {
        if shape.numel() != self.numel() {
            return Err(Error::shape("reshape", format!("cannot view {} as {shape}", self.shape())));
        }
        Ok(Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            shape,
            storage: self.0.storage.clone(),
            requires_grad: false,
        })))
    }

    /// Whether two tensors share their storage (views of one buffer).
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
}
