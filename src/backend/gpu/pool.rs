//! The caching allocator between tensors and a driver. A freed buffer is kept in a free list
//! of its size class and handed out again to the next request of that class, so a training
//! step that repeats the allocation sequence of the step before makes no driver allocation at
//! all (PyTorch's CUDA caching allocator rests on the same observation). Reuse is safe because
//! every launch, copy and free is ordered on one stream: a buffer freed after the launch that
//! reads it is reused only by work queued after that launch.
//!
//! Classes are four per power of two (2^k times 1, 1.25, 1.5 and 1.75), from 512 bytes, so a
//! block is at most 25% larger than its request, and captions of slightly different lengths
//! still share blocks. The emulator is told each block's requested extent when it is handed
//! out ([`Driver::reuse`]) and that a cached block is dead ([`Driver::retire`]), so its
//! sanitizer checks bounds and initialisation exactly as if every request were fresh.

use std::collections::HashMap;
use std::sync::Mutex;

use super::counters;
use super::driver::{DevicePtr, Driver};
use crate::error::{Error, Result};
use crate::tensor::Device;

/// The smallest block.
const MIN_BLOCK: usize = 512;

/// Most bytes the emulator's cache keeps: its blocks are host memory, which Linux overcommits,
/// so an out-of-memory error would never come to release them, and a test process that runs
/// many shapes would keep the peak of every one. A block given back beyond it is freed.
const EMU_CACHE_LIMIT: usize = 1 << 30;

/// Free blocks per (device, capacity).
#[derive(Default)]
struct FreeLists {
    blocks: HashMap<(Device, usize), Vec<DevicePtr>>,
    bytes: HashMap<Device, usize>,
}

static FREE: Mutex<Option<FreeLists>> = Mutex::new(None);

/// The capacity of the block that serves a request of `bytes`.
pub fn capacity_for(bytes: usize) -> usize {
    if bytes <= MIN_BLOCK {
        return MIN_BLOCK;
    }
    // base < bytes <= 2 base; classes step by base / 4.
    let base = 1usize << (usize::BITS - 1 - (bytes - 1).leading_zeros());
    bytes.div_ceil(base / 4) * (base / 4)
}

fn with_free<R>(f: impl FnOnce(&mut FreeLists) -> R) -> R {
    let mut guard = FREE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(guard.get_or_insert_with(FreeLists::default))
}

impl FreeLists {
    fn pop(&mut self, device: Device, capacity: usize) -> Option<DevicePtr> {
        let ptr = self.blocks.get_mut(&(device, capacity)).and_then(Vec::pop)?;
        *self.bytes.entry(device).or_default() -= capacity;
        Some(ptr)
    }

    /// Keeps a block, unless the device's cache is full; returns whether it kept it.
    fn push(&mut self, device: Device, capacity: usize, ptr: DevicePtr) -> bool {
        let cached = self.bytes.entry(device).or_default();
        if device == Device::Emu && *cached + capacity > EMU_CACHE_LIMIT {
            return false;
        }
        *cached += capacity;
        self.blocks.entry((device, capacity)).or_default().push(ptr);
        true
    }
}

/// A block of at least `bytes` on `device`: a cached one of the class, or a new one from the
/// driver. When the driver is out of memory, the device's cached blocks are released and the
/// allocation is tried once more.
pub fn take(device: Device, driver: &dyn Driver, bytes: usize) -> Result<DevicePtr> {
    let capacity = capacity_for(bytes);
    if let Some(ptr) = with_free(|free| free.pop(device, capacity)) {
        counters::cached_allocation(bytes);
        driver.reuse(ptr, bytes);
        return Ok(ptr);
    }
    let ptr = match driver.alloc(capacity) {
        Ok(ptr) => ptr,
        Err(first) => {
            let released = release_cached(device, driver);
            if released == 0 {
                return Err(first);
            }
            driver
                .alloc(capacity)
                .map_err(|e| Error::Device(format!("{e} (after releasing {released} bytes of cached blocks)")))?
        }
    };
    driver.reuse(ptr, bytes);
    Ok(ptr)
}

/// Puts a block from [`take`]`(device, _, bytes)` back into its free list (or frees it, when
/// the emulator's cache is full).
///
/// # Safety
/// Nothing uses `ptr` afterwards, except through a later [`take`].
pub unsafe fn give_back(device: Device, driver: &dyn Driver, ptr: DevicePtr, bytes: usize) {
    let capacity = capacity_for(bytes);
    driver.retire(ptr);
    if !with_free(|free| free.push(device, capacity, ptr)) {
        // SAFETY: the block came from `driver.alloc(capacity)` and the caller gives it up.
        unsafe { driver.free(ptr, capacity) };
    }
}

/// Frees every cached block of `device` through `driver`; returns their bytes.
pub fn release_cached(device: Device, driver: &dyn Driver) -> usize {
    let blocks: Vec<(usize, Vec<DevicePtr>)> = with_free(|free| {
        free.bytes.remove(&device);
        let keys: Vec<(Device, usize)> = free.blocks.keys().filter(|(d, _)| *d == device).copied().collect();
        keys.into_iter().filter_map(|key| free.blocks.remove(&key).map(|ptrs| (key.1, ptrs))).collect()
    });
    let mut released = 0;
    for (capacity, ptrs) in blocks {
        for ptr in ptrs {
            // SAFETY: cached blocks came from `driver.alloc(capacity)` and nothing uses them.
            unsafe { driver.free(ptr, capacity) };
            released += capacity;
        }
    }
    released
}

/// Bytes held in `device`'s free lists.
pub fn cached_bytes(device: Device) -> usize {
    with_free(|free| free.bytes.get(&device).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::counters::measure;

    #[test]
    fn classes_cover_requests_with_at_most_a_quarter_to_spare() {
        assert_eq!(capacity_for(0), 512);
        assert_eq!(capacity_for(512), 512);
        assert_eq!(capacity_for(513), 640);
        assert_eq!(capacity_for(1024), 1024);
        assert_eq!(capacity_for(1025), 1280);
        assert_eq!(capacity_for(3 << 20), 3 << 20);
        for bytes in (1..200_000).step_by(97) {
            let c = capacity_for(bytes);
            assert!(c >= bytes && (c <= 512 || c * 4 <= bytes * 5 + 4), "{bytes} -> {c}");
        }
    }

    #[test]
    fn a_block_given_back_serves_the_next_request_of_its_class_without_the_driver() {
        // An odd size no other test asks for, so no test running beside this one takes the block.
        let (device, bytes) = (Device::Emu, 777_777);
        let driver = crate::backend::gpu::driver(device).unwrap();
        let first = take(device, driver, bytes).unwrap();
        // SAFETY: nothing uses the block after this.
        unsafe { give_back(device, driver, first, bytes) };
        assert!(cached_bytes(device) >= capacity_for(bytes));
        let (second, counts) = measure(|| take(device, driver, bytes - 1000).unwrap());
        assert_eq!(second, first, "the same block, handed out again");
        assert_eq!((counts.allocations.count, counts.cached_allocations.count), (0, 1));
        // SAFETY: as above.
        unsafe { give_back(device, driver, second, bytes - 1000) };
    }
}
