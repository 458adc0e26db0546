//! Element types. The CPU reference computes in f32 or f64 (f64 for gradient checks);
//! bf16 is a storage type here, used by the GPU path later and reachable through `cast`.

use std::fmt;

use super::storage::CpuStorage;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
        };
        f.write_str(name)
    }
}

/// A float type the CPU backend computes in. Implemented for f32 and f64 only.
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Send
    + Sync
    + fmt::Debug
    + Default
    + 'static
{
    const DTYPE: DType;
    /// The typed slice inside a CPU storage, if the storage holds this type.
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
    fn into_storage(data: Vec<Self>) -> CpuStorage;
    /// Lossy conversion from f64, for constants such as eps.
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    const DTYPE: DType = DType::F32;
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
        match storage {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn into_storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(data)
    }
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    const DTYPE: DType = DType::F64;
    fn slice(storage: &CpuStorage) -> Option<&[Self]> {
        match storage {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
        match storage {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn into_storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(data)
    }
    fn of(x: f64) -> Self {
        x
    }
}
