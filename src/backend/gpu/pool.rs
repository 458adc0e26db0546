//! The caching allocator between tensors and a driver. A freed buffer is kept in a free list
//! of its size class and handed out again to the next request of that class, so a training
//! step that repeats the allocation sequence of the step before makes no driver allocation at
//! all (PyTorch's CUDA caching allocator rests on the same observation). Reuse is safe because
//! every launch, copy and free is ordered on one stream: a buffer freed after the launch that
//! reads it is reused only by work queued after that launch.
//!
//! Classes are four per power of two (2^k times 1, 1.25, 1.5 and 1.75), from 512 bytes. A
//! request takes a free block of its own class or, failing that, of one of the next
//! [`LARGER_CLASSES`] classes, so a block is at most twice its request; the driver is asked
//! only when none of those has one. Packed captions change a step's sizes from batch to batch,
//! and this is what lets such steps run without the driver after a few warm-up steps. The emulator is told each block's requested extent when it is handed
//! out ([`Driver::reuse`]) and that a cached block is dead ([`Driver::retire`]), so its
//! sanitizer checks bounds and initialisation exactly as if every request were fresh.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use super::counters;
use super::driver::{DevicePtr, Driver};
use crate::error::{Error, Result};
use crate::tensor::Device;

/// The smallest block.
const MIN_BLOCK: usize = 512;
/// How many classes above its own a request may take a free block from (four: up to twice
/// its size).
const LARGER_CLASSES: usize = 4;

/// A block of device memory from [`take`]: where it is and how large it really is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub ptr: DevicePtr,
    pub capacity: usize,
}

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

thread_local! {
    /// While this thread captures a graph: the blocks given back during the capture, which the
    /// graph's work goes on using at every launch, so no one outside the capture may get them.
    static PRIVATE: RefCell<Option<(Device, FreeLists)>> = const { RefCell::new(None) };
}

/// The blocks a graph's work uses after its capture ended: given back to the caching
/// allocator only when the graph is gone ([`end_private`], [`give_back_private`]).
pub struct PrivateBlocks {
    device: Device,
    blocks: Vec<Block>,
}

impl PrivateBlocks {
    /// Whether one of the blocks starts at `ptr`.
    pub fn contains(&self, ptr: DevicePtr) -> bool {
        self.blocks.iter().any(|b| b.ptr == ptr)
    }
}

/// From now on, blocks this thread gives back on `device` are kept apart, for requests of the
/// same thread only, until [`end_private`]: the memory of a graph capture.
pub fn begin_private(device: Device) {
    PRIVATE.set(Some((device, FreeLists::default())));
}

/// Ends [`begin_private`] and hands over the blocks kept apart.
pub fn end_private() -> PrivateBlocks {
    let (device, lists) = PRIVATE.take().expect("end_private after begin_private on this thread");
    let blocks = lists
        .blocks
        .into_iter()
        .flat_map(|((_, capacity), ptrs)| ptrs.into_iter().map(move |ptr| Block { ptr, capacity }))
        .collect();
    PrivateBlocks { device, blocks }
}

/// Returns a graph's blocks to the general free lists.
///
/// # Safety
/// Nothing uses the blocks afterwards (the graph is destroyed and no launch of it is pending).
pub unsafe fn give_back_private(driver: &dyn Driver, private: PrivateBlocks) {
    for block in private.blocks {
        if !with_free(|free| free.push(private.device, block.capacity, block.ptr)) {
            // SAFETY: the block came from `driver.alloc(capacity)` and the caller gives it up.
            unsafe { driver.free(block.ptr, block.capacity) };
        }
    }
}

/// Runs `f` on this thread's private free lists when it keeps them for `device`.
fn with_private<R>(device: Device, f: impl FnOnce(&mut FreeLists) -> R) -> Option<R> {
    PRIVATE.with_borrow_mut(|private| match private {
        Some((d, lists)) if *d == device => Some(f(lists)),
        _ => None,
    })
}

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
        self.keep(device, capacity, ptr);
        true
    }

    /// Keeps a block, however full the cache.
    fn keep(&mut self, device: Device, capacity: usize, ptr: DevicePtr) {
        *self.bytes.entry(device).or_default() += capacity;
        self.blocks.entry((device, capacity)).or_default().push(ptr);
    }
}

/// A block of at least `bytes` on `device`: a cached one of the class, or a new one from the
/// driver. When the driver is out of memory, the device's cached blocks are released and the
/// allocation is tried once more.
pub fn take(device: Device, driver: &dyn Driver, bytes: usize) -> Result<Block> {
    let capacity = capacity_for(bytes);
    let classes: Vec<usize> =
        std::iter::successors(Some(capacity), |&c| Some(capacity_for(c + 1))).take(1 + LARGER_CLASSES).collect();
    let from =
        |free: &mut FreeLists| classes.iter().find_map(|&c| free.pop(device, c).map(|ptr| Block { ptr, capacity: c }));
    let cached = with_private(device, from).flatten().or_else(|| with_free(from));
    if let Some(block) = cached {
        counters::cached_allocation(bytes);
        driver.reuse(block.ptr, bytes);
        return Ok(block);
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
    Ok(Block { ptr, capacity })
}

/// Puts a block from [`take`]`(device, ..)` back into its free list (or frees it, when the
/// emulator's cache is full).
///
/// # Safety
/// Nothing uses the block afterwards, except through a later [`take`].
pub unsafe fn give_back(device: Device, driver: &dyn Driver, block: Block) {
    driver.retire(block.ptr);
    // Private lists have no cap: each of their blocks is in a graph's use.
    if with_private(device, |private| private.keep(device, block.capacity, block.ptr)).is_some() {
        return;
    }
    if !with_free(|free| free.push(device, block.capacity, block.ptr)) {
        // SAFETY: the block came from `driver.alloc(capacity)` and the caller gives it up.
        unsafe { driver.free(block.ptr, block.capacity) };
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
        assert_eq!(first.capacity, capacity_for(bytes));
        // SAFETY: nothing uses the block after this.
        unsafe { give_back(device, driver, first) };
        assert!(cached_bytes(device) >= first.capacity);
        let (second, counts) = measure(|| take(device, driver, bytes - 1000).unwrap());
        assert_eq!(second, first, "the same block, handed out again");
        assert_eq!((counts.allocations.count, counts.cached_allocations.count), (0, 1));
        // SAFETY: as above.
        unsafe { give_back(device, driver, second) };
        // A request two classes smaller takes a cached block (this one, if no test beside this
        // one gave back a block of its own class) rather than asking the driver.
        let (third, counts) = measure(|| take(device, driver, bytes * 4 / 6).unwrap());
        assert_eq!(counts.allocations.count, 0);
        // SAFETY: as above.
        unsafe { give_back(device, driver, third) };
    }
}
