//! Subcommands. Each returns an error rather than panicking, and `main` turns it into a
//! message and exit status 1.

mod ablate;
mod bench;
mod benchmark;
mod data;
mod encode;
mod eval;
mod export;
mod kernels;
mod params;
mod prepare;
mod profile;
mod run_model;
mod train;
mod world;

use clap::{Parser, Subcommand};

/// msclip: modality-shared contrastive image-text transformers.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a preset on the shapes world (the default: tiny MS-CLIP on the CPU, minutes).
    Train(Box<train::TrainArgs>),
    /// Evaluate a run's checkpoint: zero-shot per factor, retrieval, binding.
    Eval(eval::EvalArgs),
    /// CLIP_benchmark's tasks on real data: zero-shot classification of an image folder, retrieval on a prepared dataset.
    Benchmark(Box<benchmark::BenchmarkArgs>),
    /// Embeddings of images or texts by a run's model, as a .npy file.
    Encode(encode::EncodeArgs),
    /// A run's weights as open_clip's state dict (safetensors), for the share-nothing models.
    Export(export::ExportArgs),
    /// Parameter counts of a preset: total, shared, vision-only, text-only.
    Params(params::ParamsArgs),
    /// Image-caption pairs (CSV/TSV, webdataset tars) to memory-mapped shards for training and evaluation.
    Prepare(prepare::PrepareArgs),
    /// The shapes-world dataset.
    Data(data::DataArgs),
    /// The CUDA kernels in this build: modules, entry points, registers, shared memory, spills.
    Kernels(kernels::KernelsArgs),
    /// What the engine asks of a GPU, counted on any GPU device (the emulator included).
    Profile(profile::ProfileArgs),
    /// Measured throughput: a training step's pairs/s, MFU and time per kind of op.
    Bench(bench::BenchArgs),
    /// Both papers' ablations at tiny scale: every arm at equal wall clock on several seeds.
    Ablate(ablate::AblateArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Benchmark(args) => benchmark::run(*args),
        Command::Encode(args) => encode::run(args),
        Command::Export(args) => export::run(args),
        Command::Params(args) => params::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Data(args) => data::run(args),
        Command::Kernels(args) => kernels::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Ablate(args) => ablate::run(args),
    }
}
