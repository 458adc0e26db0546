//! The CUDA driver (cudarc): the real GPU.

use super::driver::{DevicePtr, Driver, GemmSpec, KernelArg, LaunchConfig};
use crate::error::{Error, Result};

pub struct CudaDriver;

impl CudaDriver {
    pub fn new() -> Result<Self> {
        Err(Error::Device("the CUDA driver is being written".into()))
    }
}

impl Driver for CudaDriver {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn alloc(&self, _bytes: usize) -> Result<DevicePtr> {
        unreachable!()
    }
    unsafe fn free(&self, _ptr: DevicePtr, _bytes: usize) {}
    fn upload(&self, _dst: DevicePtr, _src: &[u8]) -> Result<()> {
        unreachable!()
    }
    fn download(&self, _src: DevicePtr, _dst: &mut [u8]) -> Result<()> {
        unreachable!()
    }
    fn copy(&self, _dst: DevicePtr, _src: DevicePtr, _bytes: usize) -> Result<()> {
        unreachable!()
    }
    fn zero(&self, _dst: DevicePtr, _bytes: usize) -> Result<()> {
        unreachable!()
    }
    fn launch(&self, _kernel: &str, _config: LaunchConfig, _args: &[KernelArg]) -> Result<()> {
        unreachable!()
    }
    fn gemm(&self, _s: GemmSpec, _a: DevicePtr, _b: DevicePtr, _bias: Option<DevicePtr>, _c: DevicePtr) -> Result<()> {
        unreachable!()
    }
    fn synchronize(&self) -> Result<()> {
        unreachable!()
    }
}
