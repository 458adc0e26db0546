//! `msclip data preview`: a PNG grid of shapes-world samples with their captions.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use msclip::data::shapes::{ShapesConfig, Split, write_preview};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write a PNG grid of samples with their captions.
    Preview {
        #[arg(long, default_value = "shapes_preview.png")]
        out: PathBuf,
        /// train, seen, unseen, unseen_template, binding, relation or extrapolate.
        #[arg(long, default_value = "train")]
        split: String,
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Image side in pixels (the tiny preset trains at 48).
        #[arg(long, default_value_t = 64)]
        image_size: usize,
    },
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Preview { out, split, count, image_size } => {
            let config = ShapesConfig { image_size, ..ShapesConfig::tiny() };
            config.validate()?;
            let split = Split::ALL.into_iter().find(|s| s.name() == split).ok_or_else(|| {
                let names: Vec<&str> = Split::ALL.iter().map(|s| s.name()).collect();
                anyhow::anyhow!("unknown split {split:?}; splits: {}", names.join(", "))
            })?;
            write_preview(&out, &config, split, count)?;
            println!("wrote {count} samples to {}", out.display());
            Ok(())
        }
    }
}
