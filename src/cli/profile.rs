//! `msclip profile`: what the engine asks of a GPU, counted on any GPU device, the emulator
//! included.

mod step;

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
}

pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    match args.command {
        ProfileCommand::Step(args) => step::run(args),
    }
}
