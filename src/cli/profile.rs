//! `msclip profile`: what the engine asks of a GPU, counted on any GPU device, the emulator
//! included.

mod bounds;
mod kernels;
mod step;
pub(super) mod steps;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    command: ProfileCommand,
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Driver calls of a training step: kernel launches, GEMMs, allocations, copies and host
    /// synchronisations.
    Step(step::StepArgs),
    /// Memory and tensor-core counters of every kernel of a training step on the emulator's
    /// profiler (like Nsight Compute's memory workload section), with occupancy and each
    /// kernel's modelled lower bound on an H100 and an H200.
    Kernels(kernels::KernelsArgs),
}

pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    match args.command {
        ProfileCommand::Step(args) => step::run(args),
        ProfileCommand::Kernels(args) => kernels::run(args),
    }
}
