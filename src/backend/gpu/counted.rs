//! A driver wrapped so that every call it receives is counted ([`super::counters`]) before it
//! runs. [`super::driver`] hands out only wrapped drivers, so the emulator and the GPU are
//! counted by the same code and neither driver knows about it.

use super::counters;
use super::driver::{DevicePtr, Driver, GemmEpilogue, GemmSpec, GraphId, KernelArg, LaunchConfig};
use crate::error::Result;

/// `D`, with its calls counted. Calls are counted when made, whether or not they succeed.
pub struct Counted<D>(D);

impl<D> Counted<D> {
    pub const fn new(driver: D) -> Self {
        Counted(driver)
    }
}

impl<D: Driver> Driver for Counted<D> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn device_name(&self) -> String {
        self.0.device_name()
    }

    fn has_wgmma(&self) -> bool {
        self.0.has_wgmma()
    }

    fn raw_stream(&self) -> Option<usize> {
        self.0.raw_stream()
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        counters::allocation(bytes);
        self.0.alloc(bytes)
    }

    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        counters::free(bytes);
        // SAFETY: the caller's contract is the wrapped driver's.
        unsafe { self.0.free(ptr, bytes) }
    }

    fn reuse(&self, ptr: DevicePtr, bytes: usize) {
        self.0.reuse(ptr, bytes)
    }

    fn retire(&self, ptr: DevicePtr) {
        self.0.retire(ptr)
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        counters::upload(src.len());
        self.0.upload(dst, src)
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        counters::download(dst.len());
        self.0.download(src, dst)
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        counters::device_copy(bytes);
        self.0.copy(dst, src, bytes)
    }

    fn zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        counters::memset(bytes);
        self.0.zero(dst, bytes)
    }

    fn launch(&self, kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        counters::launch(kernel);
        self.0.launch(kernel, config, args)
    }

    fn gemm(&self, spec: GemmSpec, a: DevicePtr, b: DevicePtr, epilogue: GemmEpilogue, c: DevicePtr) -> Result<()> {
        counters::gemm(spec);
        self.0.gemm(spec, a, b, epilogue, c)
    }

    fn has_bias_grad_epilogue(&self, spec: GemmSpec) -> bool {
        self.0.has_bias_grad_epilogue(spec)
    }

    fn synchronize(&self) -> Result<()> {
        counters::synchronize();
        self.0.synchronize()
    }

    fn begin_capture(&self) -> Result<()> {
        self.0.begin_capture()
    }

    fn end_capture(&self) -> Result<GraphId> {
        self.0.end_capture()
    }

    fn launch_graph(&self, graph: GraphId) -> Result<()> {
        counters::graph_launch();
        self.0.launch_graph(graph)
    }

    fn destroy_graph(&self, graph: GraphId) {
        self.0.destroy_graph(graph)
    }
}
