//! `msclip eval --run runs/NAME`: evaluates a checkpoint of a run (or, with `--weights`, an
//! open_clip or original MS-CLIP state dict of its model) and writes the metrics as a
//! CLIP_benchmark-style JSON.

use std::path::PathBuf;

use clap::Args;
use msclip::data::shapes::zero_shot_factors;
use msclip::eval::{evaluate, localisation, zero_shot_classifier};
use msclip::train::memory;
use serde_json::json;

use super::run_model::{RunModel, RunWeightsArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    source: RunWeightsArgs,
    /// Images per evaluation split.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Where to write the metrics JSON; defaults to <run>/eval.json.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also write a PNG of zero-shot localisation heatmaps here: every object of the first 8
    /// two-object scenes, named by colour and shape, its box in white and the peak patch in black.
    #[arg(long)]
    heatmaps: Option<PathBuf>,
}

/// Two-object scenes the heatmap sheet shows (two heatmaps each).
const HEATMAP_SCENES: usize = 8;

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.samples == 0 {
        anyhow::bail!("--samples must be at least 1 (images per evaluation split)");
    }
    let output = args.output.unwrap_or_else(|| args.source.run.join("eval.json"));
    if output.is_dir() {
        anyhow::bail!("--output {} is a directory; give the path of the JSON file to write", output.display());
    }
    if let Some(path) = &args.heatmaps {
        // Checked before the evaluation runs, so a wrong path costs nothing.
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if path.is_dir() || !folder.is_dir() {
            anyhow::bail!("--heatmaps {}: give the path of a PNG file in an existing folder", path.display());
        }
    }
    let RunModel { train, model, params, mut buffers, tokenizer, step, source } = args.source.load()?;
    memory::check_evaluation(&model, "--samples", args.samples as u64)?;
    let report = evaluate(&model, &params, &mut buffers, &tokenizer, &train.data, args.samples)?;
    let at =
        step.map(|s| format!("at step {s}")).unwrap_or_else(|| format!("with the weights of {}", source.display()));
    println!("{} {at}, {} images per split\n{}", model.config.name, args.samples, report.summary());
    let record = json!({
        "dataset": "shapes",
        "model": model.config.name,
        "pretrained": source.display().to_string(),
        "step": step,
        "task": ["zeroshot_classification", "zeroshot_retrieval", "image_caption_selection", "zeroshot_localisation"],
        "samples_per_split": args.samples,
        "metrics": report.metrics(),
    });
    msclip::files::write_atomically(&output, serde_json::to_string_pretty(&record)?.as_bytes())?;
    println!("metrics written to {}", output.display());
    if let Some(path) = &args.heatmaps {
        let factor = zero_shot_factors().into_iter().find(|f| f.name == "colour_shape");
        let factor = factor.ok_or_else(|| anyhow::anyhow!("the shapes world has no colour_shape factor"))?;
        let names = zero_shot_classifier(&model, &params, &tokenizer, &factor)?;
        let scenes = localisation::scenes(&train.data, HEATMAP_SCENES);
        let scenes: Vec<_> = scenes.iter().collect();
        let size = train.data.image_size;
        let maps = localisation::heatmaps(&model, &params, &mut buffers, &scenes, size, &names)?;
        localisation::write_heatmaps(path, &scenes, size, &maps)?;
        println!("localisation heatmaps written to {}", path.display());
    }
    Ok(())
}
