//! The kernel modules build.rs compiled: names, GPU images (when nvcc was found) and the
//! ptxas resource report.

/// One `kernels/<name>.cu` file.
pub struct KernelModule {
    pub name: &'static str,
    /// Its `extern "C" __global__` entry points.
    pub kernels: &'static [&'static str],
    /// The fatbin (sm_90a cubin + compute_90 PTX); `None` when the crate was built without nvcc.
    pub image: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The module that holds `kernel`.
pub fn module_of(kernel: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.kernels.contains(&kernel))
}
