//! `msclip bench`: measured performance, beside the counts and bounds of `msclip profile`.

mod chart;
mod roofline;
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
    /// Result files of `bench step --json` (and of benches/pytorch_reference.py --json) as one
    /// PNG of stacked bars: the step's time per kind of op, side by side.
    Chart(chart::ChartArgs),
    /// The speed of light of every kernel of a GPU step (scripts/kernel_times.py --json over an
    /// Nsight Compute CSV) as one PNG: % of peak memory and compute throughput, area = time.
    Roofline(roofline::RooflineArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Step(args) => step::run(args),
        BenchCommand::Chart(args) => chart::run(args),
        BenchCommand::Roofline(args) => roofline::run(args),
    }
}
