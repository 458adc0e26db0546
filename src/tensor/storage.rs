//! Where a tensor's elements live: host vectors, or a GPU driver's memory.

use half::bf16;

use super::DType;
use crate::backend::gpu::GpuStorage;
use crate::error::{Error, Result};

/// The device a tensor lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU reference backend.
    #[default]
    Cpu,
    /// The GPU backend on an NVIDIA GPU (cudarc).
    Cuda,
    /// The GPU backend on the SIMT emulator: the same kernels, run on the host.
    Emu,
}

impl Device {
    /// Whether tensors here go through the GPU backend (real or emulated).
    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Cuda | Device::Emu)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Emu => "emu",
        })
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "emu" => Ok(Device::Emu),
            other => Err(Error::config(format!("unknown device {other:?}: cpu, cuda or emu"))),
        }
    }
}

/// Host memory, one contiguous vector per tensor.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::F64 => CpuStorage::F64(vec![0.0; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
        }
    }

    /// Every element widened to f64 (exact for all three types).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::F64(v) => v.clone(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        }
    }

    /// Converts from f64, rounding to nearest (even) for the narrower types.
    pub fn from_f64_slice(dtype: DType, data: &[f64]) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(data.iter().map(|&x| x as f32).collect()),
            DType::F64 => CpuStorage::F64(data.to_vec()),
            DType::BF16 => CpuStorage::BF16(data.iter().map(|&x| bf16::from_f64(x)).collect()),
        }
    }

    /// Rebuilds storage from raw little-endian bytes (any alignment), as written by `as_bytes`.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(dtype.size_in_bytes()) {
            return None;
        }
        Some(match dtype {
            DType::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F64 => CpuStorage::F64(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(bytes)),
        })
    }

    /// The raw bytes, little-endian as in memory (for checkpoints and hashing).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
        }
    }
}

/// A tensor's storage on whichever device it lives.
#[derive(Debug, Clone)]
pub enum Storage {
    Cpu(CpuStorage),
    Gpu(GpuStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(g) => g.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Gpu(g) => g.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Gpu(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
