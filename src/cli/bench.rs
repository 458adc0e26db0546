//! `msclip bench`: measured performance, beside the counts and bounds of `msclip profile`.

mod step;
mod trace;
mod variants;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training-step throughput of a preset on a device: pairs/s, step time, FLOPs and MFU,
    /// memory, driver calls, and where the time goes per kind of op.
    Step(step::StepArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Step(args) => step::run(args),
    }
}
