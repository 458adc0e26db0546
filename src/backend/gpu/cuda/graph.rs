//! CUDA graphs by stream capture: between `begin` and `end` the work queued on the driver's
//! stream is recorded by CUDA instead of run, then instantiated once and launched as a whole.
//!
//! Uploads inside a capture cannot use the staging ring: the captured copy node reads its
//! source when the graph runs, and the ring's bytes will have changed by then. Each such upload
//! gets pinned memory of its own, kept with the graph, so every launch copies the bytes the
//! capture saw (what the driver trait promises: an upload inside a capture is a constant).

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;

use cudarc::driver::result as cu;
use cudarc::driver::sys as cu_sys;

use super::driver_error;
use crate::backend::gpu::driver::{DevicePtr, GraphId};
use crate::error::{Error, Result};

/// Pinned host memory holding one captured upload's bytes.
struct PinnedConstant(*mut c_void);

impl Drop for PinnedConstant {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_host` below and no longer read by any graph.
        let _ = unsafe { cu::free_host(self.0) };
    }
}

struct Instantiated {
    graph: cu_sys::CUgraph,
    exec: cu_sys::CUgraphExec,
    _constants: Vec<PinnedConstant>,
}

/// The capture under way (its uploads so far) and the graphs made.
#[derive(Default)]
pub(super) struct Graphs {
    capturing: Option<Vec<PinnedConstant>>,
    made: HashMap<GraphId, Instantiated>,
    next_id: GraphId,
    /// Memory allocated during a capture, outside the stream-ordered pool.
    plain_allocations: HashSet<DevicePtr>,
}

impl Graphs {
    pub(super) fn is_capturing(&self) -> bool {
        self.capturing.is_some()
    }

    pub(super) fn note_plain_allocation(&mut self, ptr: DevicePtr) {
        self.plain_allocations.insert(ptr);
    }

    /// Whether `ptr` was allocated during a capture (and must be freed as such); forgets it.
    pub(super) fn forget_plain_allocation(&mut self, ptr: DevicePtr) -> bool {
        self.plain_allocations.remove(&ptr)
    }

    /// An error for `call`, which cannot be captured, while a capture is under way.
    pub(super) fn refuse_while_capturing(&self, call: &str) -> Result<()> {
        match self.is_capturing() {
            true => Err(Error::Device(format!("cuda: {call} while capturing a graph"))),
            false => Ok(()),
        }
    }

    /// # Safety
    /// The context is current and `stream` is its stream.
    pub(super) unsafe fn begin(&mut self, stream: cu_sys::CUstream) -> Result<()> {
        if self.is_capturing() {
            return Err(Error::Device("cuda: a graph capture is already under way".into()));
        }
        // Relaxed: plain device allocations and the pinned memory of captured uploads are legal
        // during the capture; the calls that are not (downloads, synchronising) the driver refuses.
        let mode = cu_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: the caller's stream.
        unsafe { cu::stream::begin_capture(stream, mode) }.map_err(|e| driver_error("begin graph capture", e))?;
        self.capturing = Some(Vec::new());
        Ok(())
    }

    /// Queues (into the capture) a copy of `src` from pinned memory the graph keeps.
    ///
    /// # Safety
    /// The context is current, a capture of `stream` is under way, and `dst` holds `src.len()`
    /// bytes whenever the graph runs.
    pub(super) unsafe fn upload(&mut self, dst: DevicePtr, src: &[u8], stream: cu_sys::CUstream) -> Result<()> {
        let constants = self.capturing.as_mut().expect("upload into a capture that is under way");
        // SAFETY: the context is current; the memory lives as long as the graph.
        let host =
            unsafe { cu::malloc_host(src.len().max(1), 0) }.map_err(|e| driver_error("pinned graph constant", e))?;
        let constant = PinnedConstant(host);
        // SAFETY: `host` holds src.len() bytes and nothing else uses it.
        let staged = unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), host.cast::<u8>(), src.len());
            std::slice::from_raw_parts(host.cast::<u8>(), src.len())
        };
        constants.push(constant);
        // SAFETY: captured, not run: the node reads `staged` at every launch of the graph.
        unsafe { cu::memcpy_htod_async(dst, staged, stream) }.map_err(|e| driver_error("captured upload", e))
    }

    /// # Safety
    /// The context is current and `stream` is the captured stream.
    pub(super) unsafe fn end(&mut self, stream: cu_sys::CUstream) -> Result<GraphId> {
        let constants =
            self.capturing.take().ok_or_else(|| Error::Device("cuda: end of a capture that never began".into()))?;
        // SAFETY: the caller's stream, under capture.
        let graph = unsafe { cu::stream::end_capture(stream) }.map_err(|e| driver_error("end graph capture", e))?;
        // SAFETY: a graph just captured.
        let exec = match unsafe { cu::graph::instantiate(graph, cu_sys::CUgraphInstantiate_flags(0)) } {
            Ok(exec) => exec,
            Err(e) => {
                // SAFETY: as above; not instantiated, so nothing else refers to it.
                let _ = unsafe { cu::graph::destroy(graph) };
                return Err(driver_error("instantiate the captured graph", e));
            }
        };
        self.next_id += 1;
        self.made.insert(self.next_id, Instantiated { graph, exec, _constants: constants });
        Ok(self.next_id)
    }

    /// # Safety
    /// The context is current and `stream` is its stream.
    pub(super) unsafe fn launch(&self, id: GraphId, stream: cu_sys::CUstream) -> Result<()> {
        self.refuse_while_capturing("launching a graph")?;
        let made = self.made.get(&id).ok_or_else(|| Error::Device(format!("cuda: no graph {id}")))?;
        // SAFETY: an instantiated graph of this context.
        unsafe { cu::graph::launch(made.exec, stream) }.map_err(|e| driver_error("launch a graph", e))
    }

    /// # Safety
    /// The context is current; the work queued before that used the graph is done or ordered
    /// before any reuse of its constants (the driver synchronises first).
    pub(super) unsafe fn destroy(&mut self, id: GraphId) {
        if let Some(made) = self.made.remove(&id) {
            // SAFETY: created by `end`; errors at teardown are moot.
            unsafe {
                let _ = cu::graph::exec_destroy(made.exec);
                let _ = cu::graph::destroy(made.graph);
            }
        }
    }
}
