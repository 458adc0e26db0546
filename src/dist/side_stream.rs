//! A second CUDA stream beside the driver's one, for collectives that may run while later
//! kernels do (the gradient buckets' sums during the backward). The two streams are ordered
//! by events only where one's work needs the other's: [`SideStream::wait_for`] before the side
//! work reads what the main stream wrote, [`SideStream::join_into`] before the main stream
//! reads what the side work wrote (or frees what it read).

use cudarc::driver::result as cu;
use cudarc::driver::sys as cu_sys;

use crate::error::{Error, Result};

fn cuda_error(what: &str, e: cu::DriverError) -> Error {
    Error::Device(format!("side stream: {what}: {e:?}"))
}

/// A non-blocking stream of the current context, destroyed on drop.
pub struct SideStream {
    raw: cu_sys::CUstream,
}

// SAFETY: a CUDA stream handle may be used from any thread of the process whose context made
// it; the calls below take no host-side state of their own.
unsafe impl Send for SideStream {}
// SAFETY: as above.
unsafe impl Sync for SideStream {}

impl SideStream {
    /// A new stream in the context current on this thread (the GPU driver's: make it current
    /// first, as `backend::gpu::driver` does).
    pub fn new() -> Result<Self> {
        let raw = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| cuda_error("create", e))?;
        Ok(SideStream { raw })
    }

    /// The raw handle, as a library that queues its own work takes it.
    pub fn raw(&self) -> usize {
        self.raw as usize
    }

    /// Work queued on this stream from now on runs after the work queued so far on `main`.
    pub fn wait_for(&self, main: usize) -> Result<()> {
        order(main as cu_sys::CUstream, self.raw)
    }

    /// Work queued on `main` from now on runs after the work queued so far on this stream.
    pub fn join_into(&self, main: usize) -> Result<()> {
        order(self.raw, main as cu_sys::CUstream)
    }
}

/// Makes `then` wait, on the device, for the work queued so far on `first`: an event recorded
/// on `first` and waited for on `then`; the host never waits.
fn order(first: cu_sys::CUstream, then: cu_sys::CUstream) -> Result<()> {
    let event =
        cu::event::create(cu_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| cuda_error("event", e))?;
    // SAFETY: both streams and the event are live in the current context. The wait captures
    // the event's state when it is queued, so destroying the event right after is allowed
    // (CUDA frees it once it completes).
    let ordered = unsafe {
        cu::event::record(event, first)
            .and_then(|_| cu::stream::wait_event(then, event, cu_sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))
    };
    // SAFETY: created above, not used after this.
    let destroyed = unsafe { cu::event::destroy(event) };
    ordered.and(destroyed).map_err(|e| cuda_error("order the streams", e))
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // SAFETY: made by `new`, not used after this; CUDA lets queued work finish first.
        let _ = unsafe { cu::stream::destroy(self.raw) };
    }
}
