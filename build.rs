//! Build script. The CUDA issue adds kernel compilation here (nvcc for sm_90 and the host
//! build of the same sources for the SIMT emulator); until then there are no kernels, and
//! this only tells cargo when to rerun.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
