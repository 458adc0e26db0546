//! A device's work captured once and launched again as one graph (CUDA graphs, or the
//! emulator's recording of the same calls): the host makes one call per launch instead of one
//! per kernel, and nothing is allocated or planned again.
//!
//! What a launch does is fixed at capture: the same kernels on the same addresses with the same
//! arguments, and uploads made during the capture repeated with the bytes they had then. New
//! inputs therefore go into the captured input buffers before a launch. The memory the captured
//! work allocates and frees is the graph's ([`pool::begin_private`]): no one else gets it while
//! the graph lives. Tensors made during the capture and kept after it are written by every launch
//! and must outlive the graph.

use super::pool::{self, PrivateBlocks};
use super::{DevicePtr, driver};
use crate::backend::gpu::driver::GraphId;
use crate::error::Result;
use crate::tensor::Device;

pub struct Graph {
    device: Device,
    id: GraphId,
    /// Taken on drop, when the blocks go back to the caching allocator.
    memory: Option<PrivateBlocks>,
}

/// Runs `work` with every driver call it makes on this thread captured into a graph (none of
/// them runs now) and returns its result beside the graph. The work may not read anything back
/// from the device or synchronise.
pub fn capture<R>(device: Device, work: impl FnOnce() -> Result<R>) -> Result<(R, Graph)> {
    let driver = driver(device)?;
    driver.begin_capture()?;
    pool::begin_private(device);
    let result = work();
    let memory = pool::end_private();
    let ended = driver.end_capture();
    let release = |memory| {
        // SAFETY: the captured work never ran and no graph of it survives.
        unsafe { pool::give_back_private(driver, memory) }
    };
    match (result, ended) {
        (Ok(value), Ok(id)) => Ok((value, Graph { device, id, memory: Some(memory) })),
        (Err(e), Ok(id)) => {
            driver.destroy_graph(id);
            release(memory);
            Err(e)
        }
        (_, Err(e)) => {
            release(memory);
            Err(e)
        }
    }
}

impl Graph {
    /// Queues the captured work once more.
    pub fn launch(&self) -> Result<()> {
        driver(self.device)?.launch_graph(self.id)
    }

    /// Whether `ptr` is the start of a block that only this graph's work uses.
    pub fn owns_block(&self, ptr: DevicePtr) -> bool {
        self.memory.as_ref().is_some_and(|m| m.contains(ptr))
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if let Ok(driver) = driver(self.device) {
            driver.destroy_graph(self.id);
            if let Some(memory) = self.memory.take() {
                // SAFETY: destroy_graph waited for pending launches; the blocks are unused now.
                unsafe { pool::give_back_private(driver, memory) };
            }
        }
    }
}
