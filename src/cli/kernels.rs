//! `msclip kernels`: the CUDA kernels built into this binary and ptxas's resource report; with
//! `--check`, every kernel run under the emulator's sanitizer.

mod check;

use clap::Args;
use msclip::backend::gpu::emu::EmuDriver;
use msclip::backend::gpu::modules::{GPU_IMAGES_BUILT, MODULES, PTXAS_REPORT};

#[derive(Args)]
pub struct KernelsArgs {
    /// Run every kernel under the emulator's sanitizer instead (training steps of the tiny
    /// presets and op-level cases, each in three thread orders); fails on any report, any output
    /// that depends on the order, or any kernel no case launched.
    #[arg(long)]
    check: bool,
}

pub fn run(args: KernelsArgs) -> anyhow::Result<()> {
    if args.check {
        return check::run();
    }
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
