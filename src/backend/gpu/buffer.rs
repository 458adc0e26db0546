//! Tensor storage in a driver's memory: one block per tensor from the caching allocator
//! ([`super::pool`]), given back on drop.
//!
//! Every allocation and free goes through `alloc` / `free` below, which count live bytes per
//! thread (the bytes requested, not the blocks' capacities), so a test can measure what an op
//! allocates ([`measure_allocations`]).

use std::cell::Cell;

use super::driver::{DevicePtr, Driver};
use super::pool::Block;
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Device, Storage, Tensor};

/// The calling thread's live bytes and their peak. Per thread, so that tests running in
/// parallel do not see each other's allocations.
#[derive(Clone, Copy)]
struct Counts {
    live: usize,
    peak: usize,
}

thread_local! {
    // const: no lazy initialisation and no destructor, so frees during thread exit still count.
    static COUNTS: Cell<Counts> = const { Cell::new(Counts { live: 0, peak: 0 }) };
}

/// Runs `f` and returns, beside its result, the most device bytes this thread held at once
/// through allocations made during `f` (`GpuStorage` and `Scratch`, which every GPU op
/// allocates with): the memory footprint of an op, outputs included.
pub fn measure_allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = COUNTS.get();
    COUNTS.set(Counts { peak: start.live, ..start });
    let result = f();
    let end = COUNTS.get();
    COUNTS.set(Counts { peak: start.peak.max(end.peak), ..end });
    (result, end.peak - start.live)
}

/// The device bytes this thread's tensors and scratch buffers hold now.
pub fn live_bytes() -> usize {
    COUNTS.get().live
}

fn alloc(device: Device, bytes: usize) -> Result<Block> {
    let block = super::pool::take(device, super::driver(device)?, bytes)?;
    let c = COUNTS.get();
    COUNTS.set(Counts { live: c.live + bytes, peak: c.peak.max(c.live + bytes) });
    Ok(block)
}

/// # Safety
/// `block` came from `alloc(device, bytes)` and nothing uses it afterwards.
unsafe fn free(device: Device, driver: &dyn Driver, block: Block, bytes: usize) {
    // SAFETY: the caller's contract.
    unsafe { super::pool::give_back(device, driver, block) };
    // A buffer allocated on another thread may be freed here: never below zero.
    let c = COUNTS.get();
    COUNTS.set(Counts { live: c.live.saturating_sub(bytes), ..c });
}

/// A tensor's elements on a GPU device (or in the emulator's memory): typed view of one
/// [`Scratch`] allocation.
///
/// Each value owns its allocation. Cloning copies the elements into a fresh allocation, which is
/// what copy-on-write (`Tensor::storage_mut`) needs: a write never shows through an alias.
pub struct GpuStorage {
    dtype: DType,
    len: usize,
    buffer: Scratch,
}

impl GpuStorage {
    /// `len` uninitialised elements.
    pub fn uninit(device: Device, dtype: DType, len: usize) -> Result<Self> {
        Ok(GpuStorage { dtype, len, buffer: Scratch::uninit(device, len * dtype.size_in_bytes())? })
    }

    pub fn zeros(device: Device, dtype: DType, len: usize) -> Result<Self> {
        Ok(GpuStorage { dtype, len, buffer: Scratch::zeros(device, len * dtype.size_in_bytes())? })
    }

    pub fn from_cpu(device: Device, host: &CpuStorage) -> Result<Self> {
        Ok(GpuStorage { dtype: host.dtype(), len: host.len(), buffer: Scratch::from_slice(device, host.as_bytes())? })
    }

    pub fn to_cpu(&self) -> Result<CpuStorage> {
        let bytes = self.buffer.read::<u8>()?;
        Ok(CpuStorage::from_bytes(self.dtype, &bytes).expect("a whole number of elements by construction"))
    }

    pub fn device(&self) -> Device {
        self.buffer.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.buffer.bytes
    }
    /// The address kernels receive.
    pub fn ptr(&self) -> DevicePtr {
        self.buffer.ptr
    }
}

/// Copies `src`'s elements into `dst`'s storage in place, in the device's stream order. The
/// write shows through every handle of `dst`'s storage: it is for memory a captured graph reads
/// or updates at fixed addresses (its inputs, the state it carries from launch to launch).
pub fn overwrite(dst: &Tensor, src: &Tensor) -> Result<()> {
    match (dst.storage(), src.storage()) {
        (Storage::Gpu(d), Storage::Gpu(s))
            if d.device() == s.device() && d.dtype() == s.dtype() && d.len() == s.len() =>
        {
            super::driver(d.device())?.copy(d.ptr(), s.ptr(), s.bytes())
        }
        _ => Err(Error::invalid("overwrite", format!("{src:?} into {dst:?}: same GPU device, dtype and size needed"))),
    }
}

impl Clone for GpuStorage {
    fn clone(&self) -> Self {
        let device = self.device();
        let copy = Scratch::uninit(device, self.bytes())
            .unwrap_or_else(|e| panic!("copy-on-write of a {}-element {} tensor: {e}", self.len, device));
        super::driver(device)
            .and_then(|driver| driver.copy(copy.ptr, self.ptr(), self.bytes()))
            .expect("device-to-device copy");
        GpuStorage { dtype: self.dtype, len: self.len, buffer: copy }
    }
}

impl std::fmt::Debug for GpuStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuStorage({} x {} on {})", self.len, self.dtype, self.device())
    }
}

/// Raw device bytes, freed on drop: tensor storage, and what is not a tensor: per-launch index
/// tables (token ids, sequence lengths), partial sums, workspaces.
pub struct Scratch {
    device: Device,
    ptr: DevicePtr,
    bytes: usize,
    /// The size of the caching allocator's block, at least `bytes`.
    capacity: usize,
}

impl Scratch {
    pub fn uninit(device: Device, bytes: usize) -> Result<Self> {
        let Block { ptr, capacity } = alloc(device, bytes)?;
        Ok(Scratch { device, ptr, bytes, capacity })
    }

    /// A copy of `values` on the device.
    pub fn from_slice<T: bytemuck::Pod>(device: Device, values: &[T]) -> Result<Self> {
        let s = Self::uninit(device, std::mem::size_of_val(values))?;
        super::driver(device)?.upload(s.ptr, bytemuck::cast_slice(values))?;
        Ok(s)
    }

    pub fn zeros(device: Device, bytes: usize) -> Result<Self> {
        let s = Self::uninit(device, bytes)?;
        super::driver(device)?.zero(s.ptr, bytes)?;
        Ok(s)
    }

    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bytes back on the host.
    pub fn read<T: bytemuck::Pod + Default>(&self) -> Result<Vec<T>> {
        let mut out = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        super::driver(self.device)?.download(self.ptr, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(driver) = super::driver(self.device) {
            // SAFETY: the block came from `alloc` of `bytes` and this value owns it.
            unsafe { free(self.device, driver, Block { ptr: self.ptr, capacity: self.capacity }, self.bytes) }
        }
    }
}
