use clap::{Parser, Subcommand};

/// msclip: modality-shared contrastive image-text transformers on hand-written kernels.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the compute backends this build has and the CPU thread count.
    Info,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => {
            let cpu = msclip::backend::get(msclip::Device::Cpu);
            println!("backends: {} (reference, f32/f64)", cpu.name());
            println!("cpu threads: {}", rayon::current_num_threads());
        }
    }
    Ok(())
}
