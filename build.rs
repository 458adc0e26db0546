//! Build script. The CUDA issue adds kernel compilation here (nvcc for sm_90 and the host
//! build of the same sources for the SIMT emulator); until then there are no kernels. It tells
//! cargo when to rerun and prepares the CLIP merges file the text tokenizer embeds.

#[path = "build/clip_merges.rs"]
mod clip_merges;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=kernels");
    clip_merges::emit();
}
