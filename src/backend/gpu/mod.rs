//! The GPU backend: kernels of `kernels/*.cu` orchestrated from Rust over a [`Driver`], the
//! real GPU (cudarc) or the SIMT emulator.

pub mod driver;
pub mod emu;
pub mod modules;

pub use driver::{DevicePtr, Driver, GemmSpec, GemmType, KernelArg, LaunchConfig};
