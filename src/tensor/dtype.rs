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
    /// e^x in a form the compiler vectorises, for the hot loops (activations, softmax).
    /// f64 keeps the exact `exp`, so gradient checks in f64 see no approximation.
    fn fast_exp(self) -> Self;
    /// The error function (libm's; Rust's std has none), for the exact GELU.
    fn erf(self) -> Self;
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
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

/// e^x within 2 ulp of `f32::exp` for x in [-87, 88] (tests/fast_exp.rs), branch-free so a
/// loop over it vectorises, where `f32::exp` is a libm call per element. The classic
/// Cephes scheme: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so n ln2 is exact),
/// e^r by a degree-6 polynomial, 2^n put into the exponent bits. Inputs are clamped to
/// [-87.3, 88]: below, the result is 1.2e-38 instead of a denormal or 0; above, exp(88) instead
/// of up to infinity (neither happens in an activation or a max-subtracted softmax). NaN stays NaN.
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
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
    fn fast_exp(self) -> Self {
        self.exp()
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
}
