//! `msclip params --preset P`.

use clap::Args;
use msclip::model::{ClipModel, preset};

#[derive(Args)]
pub struct ParamsArgs {
    /// One of the presets (see the error for the list).
    #[arg(long, default_value = "tiny")]
    preset: String,
}

pub fn run(args: ParamsArgs) -> anyhow::Result<()> {
    let model = ClipModel::new(preset(&args.preset)?)?;
    let c = model.counts();
    let row = |label: &str, n: usize| println!("{label:<12} {n:>13}  ({:5.1}%)", 100.0 * n as f64 / c.total as f64);
    println!("preset {} ({:?} sharing)", args.preset, model.config.sharing);
    row("total", c.total);
    row("shared", c.shared);
    row("vision-only", c.vision_only);
    row("text-only", c.text_only);
    row("logit scale", c.joint);
    Ok(())
}
