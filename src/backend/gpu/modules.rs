//! The kernel modules build.rs compiled: names, GPU images (when nvcc was found) and the
//! ptxas resource report, as text and per kernel.

/// One `kernels/<name>.cu` file.
pub struct KernelModule {
    pub name: &'static str,
    /// Its `extern "C" __global__` entry points.
    pub kernels: &'static [&'static str],
    /// The fatbin (sm_90a cubin + compute_90 PTX); `None` when the crate was built without nvcc.
    pub image: Option<&'static [u8]>,
}

/// What ptxas reported for one kernel of the sm_90a image: what a block of it takes from an SM
/// besides what its launch asks for (threads, dynamic shared memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelResources {
    pub name: &'static str,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block (`__shared__` arrays), in bytes.
    pub shared_bytes: u32,
    /// Stack frame per thread, in bytes (local memory).
    pub stack_bytes: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The module that holds `kernel`.
pub fn module_of(kernel: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.kernels.contains(&kernel))
}

/// ptxas's resources of `kernel`; `None` for a kernel this build has no GPU image of (none
/// has one when nvcc was not found).
pub fn kernel_resources(kernel: &str) -> Option<&'static KernelResources> {
    KERNEL_RESOURCES.iter().find(|k| k.name == kernel)
}
