//! `msclip eval --run runs/NAME`: evaluates a checkpoint of a run (or, with `--weights`, an
//! open_clip or original MS-CLIP state dict of its model) as the run's own evaluations do and
//! writes the metrics as a CLIP_benchmark-style JSON: on the shapes world every probe; for a
//! run on prepared data, the retrieval of its `--val-data` dataset.

use std::path::{Path, PathBuf};

use clap::Args;
use msclip::data::shapes::zero_shot_factors;
use msclip::data::shards::PreparedDataset;
use msclip::eval::benchmark::retrieval;
use msclip::eval::{evaluate, localisation, zero_shot_classifier};
use msclip::train::memory;
use serde_json::json;

use super::run_model::{RunModel, RunWeightsArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    source: RunWeightsArgs,
    /// Images per evaluation split of the shapes world (a run on prepared data is evaluated on
    /// its whole validation dataset).
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
    let loaded = args.source.load()?;
    if let Some(data) = &loaded.train.train_data {
        if args.heatmaps.is_some() {
            anyhow::bail!(
                "--heatmaps draws the shapes world's two-object scenes; {} trained on the prepared dataset {}",
                args.source.run.display(),
                data.dir.display()
            );
        }
        return evaluate_validation_data(loaded, &args.source.run, &output);
    }
    let RunModel { train, model, params, mut buffers, tokenizer, step, source } = loaded;
    memory::check_evaluation(&model, "--samples", args.samples as u64)?;
    let report = evaluate(&model, &params, &mut buffers, &tokenizer, &train.data, args.samples)?;
    let at = weights_named(step, &source);
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

/// How the console names the weights: the checkpoint's step, or the file they came from.
fn weights_named(step: Option<u64>, source: &Path) -> String {
    step.map(|s| format!("at step {s}")).unwrap_or_else(|| format!("with the weights of {}", source.display()))
}

/// The evaluation of a run on prepared data: the retrieval of the dataset its `--val-data`
/// named, as its evaluations during training measured it.
fn evaluate_validation_data(loaded: RunModel, run: &Path, output: &Path) -> anyhow::Result<()> {
    let RunModel { train, model, params, mut buffers, tokenizer, step, source } = loaded;
    let Some(dir) = &train.val_data else {
        anyhow::bail!(
            "{} trained on prepared data without --val-data, and the shapes world's probes do not apply to it: \
             evaluate it on a dataset with `msclip benchmark --run {} --task zeroshot_retrieval --dataset DIR` (a \
             folder `msclip prepare` wrote) or `--task zeroshot_classification` on an image folder",
            run.display(),
            run.display()
        );
    };
    let dataset = PreparedDataset::open(dir)?;
    let result = retrieval(&model, &params, &mut buffers, &tokenizer, &dataset)?;
    println!("{} {}\nvalidation retrieval: {}", model.config.name, weights_named(step, &source), result.summary());
    let record = json!({
        "dataset": dir.display().to_string(),
        "model": model.config.name,
        "pretrained": source.display().to_string(),
        "step": step,
        "task": "zeroshot_retrieval",
        "images": result.images,
        "captions": result.captions,
        "metrics": result.metrics(),
    });
    msclip::files::write_atomically(output, serde_json::to_string_pretty(&record)?.as_bytes())?;
    println!("metrics written to {}", output.display());
    Ok(())
}
