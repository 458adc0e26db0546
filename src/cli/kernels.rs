//! `msclip kernels`: the CUDA kernels built into this binary and ptxas's resource report.

use clap::Args;
use msclip::backend::gpu::emu::EmuDriver;
use msclip::backend::gpu::modules::{GPU_IMAGES_BUILT, MODULES, PTXAS_REPORT};

#[derive(Args)]
pub struct KernelsArgs {}

pub fn run(_args: KernelsArgs) -> anyhow::Result<()> {
    let emulated = EmuDriver::kernel_names();
    for module in MODULES {
        let image = match module.image {
            Some(bytes) => format!("sm_90a + compute_90 fatbin, {} KiB", bytes.len().div_ceil(1024)),
            None => "no GPU image".to_string(),
        };
        println!("kernels/{}.cu ({image})", module.name);
        for kernel in module.kernels {
            let emu = if emulated.iter().any(|n| n == kernel) { "emu" } else { "NOT IN EMULATOR" };
            println!("    {kernel:<40} {emu}");
        }
    }
    println!();
    print!("{PTXAS_REPORT}");
    if !GPU_IMAGES_BUILT {
        println!("(--device cuda needs these images: install nvcc and rebuild)");
    }
    Ok(())
}
