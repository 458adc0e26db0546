//! Build script: compiles the CUDA kernels (for sm_90 with nvcc when present, and always for the
//! host's SIMT emulator) and prepares the CLIP merges file the text tokenizer embeds.

#[path = "build/clip_merges.rs"]
mod clip_merges;
#[path = "build/kernels.rs"]
mod kernels;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=kernels");
    clip_merges::emit();
    kernels::emit();
}
