//! What every kernel family's launch code needs: output allocation, pointers, kernel names per
//! dtype and launch-size arithmetic.

use super::buffer::Scratch;
use super::driver::{DevicePtr, Driver, KernelArg, LaunchConfig};
use super::footprint::Footprint;
use super::{GpuBackend, GpuStorage};
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Shape, Storage, Tensor};

impl GpuBackend {
    pub(super) fn device(&self) -> Device {
        self.device
    }

    pub(super) fn driver(&self) -> Result<&'static dyn Driver> {
        super::driver(self.device)
    }

    /// A tensor of uninitialised elements on this device; the caller's kernel writes them all.
    pub(super) fn uninit(&self, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_storage(Storage::Gpu(GpuStorage::uninit(self.device, dtype, shape.numel())?), shape)
    }

    pub(super) fn zeros(&self, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_storage(Storage::Gpu(GpuStorage::zeros(self.device, dtype, shape.numel())?), shape)
    }

    /// A copy of host values on this device (per-launch tables: token ids, sequence lengths).
    pub(super) fn upload<T: bytemuck::Pod>(&self, values: &[T]) -> Result<Scratch> {
        Scratch::from_slice(self.device, values)
    }

    /// Whether this backend's kernels run their bf16 products on wgmma.
    pub(super) fn uses_wgmma(&self) -> Result<bool> {
        Ok(self.allow_wgmma && self.driver()?.has_wgmma())
    }

    /// Launches `kernel`; `footprint` is what it must move at the least, which the emulator's
    /// profiler reports beside what it did move.
    pub(super) fn launch(
        &self,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
        footprint: Footprint,
    ) -> Result<()> {
        let driver = self.driver()?;
        super::emu::with_footprint(footprint, || driver.launch(kernel, config, args))
    }
}

/// The device address of a tensor's elements, as a kernel argument.
pub(super) fn ptr(t: &Tensor) -> Result<KernelArg> {
    Ok(KernelArg::Ptr(device_ptr(t)?))
}

pub(super) fn device_ptr(t: &Tensor) -> Result<DevicePtr> {
    match t.storage() {
        Storage::Gpu(g) => Ok(g.ptr()),
        Storage::Cpu(_) => Err(Error::Device(format!("{t:?} is on the CPU, not on the GPU device of the op"))),
    }
}

/// The address of a tensor a kernel writes in place, after copy-on-write made its storage its
/// own.
pub(super) fn writable_ptr(t: &mut Tensor) -> Result<DevicePtr> {
    t.storage_mut();
    device_ptr(t)
}

/// `<base>_f32` or `<base>_bf16`: the instantiation of a kernel for `dtype`.
pub(super) fn kernel_for(base: &str, dtype: DType) -> Result<String> {
    match dtype {
        DType::F32 => Ok(format!("{base}_f32")),
        DType::BF16 => Ok(format!("{base}_bf16")),
        DType::F64 => Err(Error::dtype("gpu", format!("{base}: GPU kernels compute in f32 or bf16, not f64"))),
    }
}

/// A `usize` as the `int` kernels take, or an error when it does not fit.
pub(super) fn int(value: usize, what: &'static str) -> Result<KernelArg> {
    i32::try_from(value)
        .map(KernelArg::I32)
        .map_err(|_| Error::invalid("gpu", format!("{what} = {value} does not fit the kernels' 32-bit indices")))
}

/// Blocks of `threads` threads covering `n` elements (at least one block).
pub(super) fn blocks_for(n: usize, threads: u32) -> u32 {
    n.div_ceil(threads as usize).max(1) as u32
}
