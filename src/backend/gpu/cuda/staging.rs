//! Host-to-device copies that the host does not wait for: each upload's bytes are copied into a
//! ring of pinned (page-locked) host memory, and an asynchronous copy from there is queued on
//! the driver's stream. A copy from pageable memory would make the host wait for all the work
//! queued before it; from pinned memory the DMA engine reads the bytes when the stream gets
//! there. An event after each copy says when its part of the ring may be written again; the
//! host waits on one only when the ring has come round to bytes the device has not read yet.

use std::collections::VecDeque;
use std::ffi::c_void;

use cudarc::driver::result as cu;
use cudarc::driver::sys as cu_sys;

use super::driver_error;
use crate::backend::gpu::driver::DevicePtr;
use crate::error::Result;

/// Bytes of pinned memory in the ring. Larger uploads go through in pieces.
pub const RING_BYTES: usize = 64 << 20;
/// Pieces start at multiples of this, as the DMA engine likes them.
const ALIGN: usize = 256;

/// A region of the ring whose copy has been queued and may not have run yet.
struct InFlight {
    start: usize,
    end: usize,
    copied: cu_sys::CUevent,
}

pub struct PinnedRing {
    base: *mut u8,
    next: usize,
    /// Oldest first; all on one stream, so an event's completion implies every older one's.
    in_flight: VecDeque<InFlight>,
    spare_events: Vec<cu_sys::CUevent>,
}

impl PinnedRing {
    /// # Safety
    /// A CUDA context is current.
    pub unsafe fn new() -> Result<Self> {
        // SAFETY: the caller's context; the memory is only ever written by this ring.
        let base = unsafe { cu::malloc_host(RING_BYTES, 0) }.map_err(|e| driver_error("pinned staging memory", e))?;
        Ok(PinnedRing { base: base.cast(), next: 0, in_flight: VecDeque::new(), spare_events: Vec::new() })
    }

    /// Queues the copy of `src` to `dst` on `stream`; returns once `src` may be reused.
    ///
    /// # Safety
    /// The context is current, `stream` is its stream, and `dst` holds `src.len()` bytes.
    pub unsafe fn upload(&mut self, dst: DevicePtr, src: &[u8], stream: cu_sys::CUstream) -> Result<()> {
        let mut offset = 0;
        for piece in src.chunks(RING_BYTES) {
            // SAFETY: the caller's contract, for the piece's part of dst.
            unsafe { self.upload_piece(dst + offset as u64, piece, stream)? };
            offset += piece.len();
        }
        Ok(())
    }

    /// # Safety
    /// As [`Self::upload`], with `piece.len() <= RING_BYTES`.
    unsafe fn upload_piece(&mut self, dst: DevicePtr, piece: &[u8], stream: cu_sys::CUstream) -> Result<()> {
        let len = piece.len();
        if len == 0 {
            return Ok(());
        }
        let start = if self.next + len > RING_BYTES { 0 } else { self.next };
        let end = start + len;
        // SAFETY: events of this context.
        unsafe { self.wait_for_region(start, end)? };
        // SAFETY: [start, end) lies inside the ring and no queued copy reads it any more.
        unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), self.base.add(start), len) };
        // SAFETY: the region stays untouched until the event below has completed.
        let staged = unsafe { std::slice::from_raw_parts(self.base.add(start), len) };
        unsafe { cu::memcpy_htod_async(dst, staged, stream) }.map_err(|e| driver_error("copy to the GPU", e))?;
        let copied = match self.spare_events.pop() {
            Some(event) => event,
            None => cu::event::create(cu_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| driver_error("staging event", e))?,
        };
        // SAFETY: an event and the stream of this context.
        unsafe { cu::event::record(copied, stream) }.map_err(|e| driver_error("staging event", e))?;
        self.in_flight.push_back(InFlight { start, end, copied });
        self.next = end.next_multiple_of(ALIGN);
        Ok(())
    }

    /// Waits until no queued copy reads [start, end): for the newest one that overlaps it (the
    /// older ones are then done too), and forgets all of those.
    ///
    /// # Safety
    /// The context is current.
    unsafe fn wait_for_region(&mut self, start: usize, end: usize) -> Result<()> {
        let Some(newest) = self.in_flight.iter().rposition(|f| f.start < end && start < f.end) else {
            return Ok(());
        };
        // SAFETY: a recorded event of this context.
        unsafe { cu::event::synchronize(self.in_flight[newest].copied) }
            .map_err(|e| driver_error("a copy to the GPU failed", e))?;
        for done in self.in_flight.drain(..=newest) {
            self.spare_events.push(done.copied);
        }
        Ok(())
    }
}

impl Drop for PinnedRing {
    fn drop(&mut self) {
        // SAFETY: the memory and events were created by this ring; errors at teardown are moot.
        unsafe {
            for f in self.in_flight.drain(..) {
                let _ = cu::event::synchronize(f.copied);
                let _ = cu::event::destroy(f.copied);
            }
            for e in self.spare_events.drain(..) {
                let _ = cu::event::destroy(e);
            }
            let _ = cu::free_host(self.base.cast::<c_void>());
        }
    }
}
