//! `msclip data preview`: a PNG grid of shapes-world samples with their captions.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use msclip::data::shapes::{ShapesConfig, Split, write_preview};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Seen,
    Unseen,
    UnseenTemplate,
    Binding,
    Relation,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write a PNG grid of samples with their captions.
    Preview {
        #[arg(long, default_value = "shapes_preview.png")]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "train")]
        split: SplitArg,
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Image side in pixels (the tiny preset trains at 32).
        #[arg(long, default_value_t = 64)]
        image_size: usize,
    },
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Preview { out, split, count, image_size } => {
            let config = ShapesConfig { image_size, ..ShapesConfig::tiny() };
            config.validate()?;
            let split = match split {
                SplitArg::Train => Split::Train,
                SplitArg::Seen => Split::Seen,
                SplitArg::Unseen => Split::Unseen,
                SplitArg::UnseenTemplate => Split::UnseenTemplate,
                SplitArg::Binding => Split::Binding,
                SplitArg::Relation => Split::Relation,
            };
            write_preview(&out, &config, split, count)?;
            println!("wrote {count} samples to {}", out.display());
            Ok(())
        }
    }
}
