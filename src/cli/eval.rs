//! `msclip eval --run runs/NAME`: evaluates a checkpoint of a run and writes the metrics
//! as a CLIP_benchmark-style JSON.

use std::path::PathBuf;

use clap::Args;
use msclip::DType;
use msclip::Rng;
use msclip::data::shapes::zero_shot_factors;
use msclip::eval::{evaluate, localisation, zero_shot_classifier};
use msclip::model::ClipModel;
use msclip::train::checkpoint::{self, Restored};
use msclip::train::{load_run_tokenizer, memory, read_run_config};
use serde_json::json;

#[derive(Args)]
pub struct EvalArgs {
    /// The run directory (holds config.json, tokenizer.json and checkpoints/).
    #[arg(long, default_value = "runs/tiny")]
    run: PathBuf,
    /// A checkpoint file; defaults to the run's checkpoints/latest.safetensors.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
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
    let (train, model_config) = read_run_config(&args.run)?;
    let output = args.output.unwrap_or_else(|| args.run.join("eval.json"));
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
    let model = ClipModel::new(model_config)?;
    memory::check_evaluation(&model, "--samples", args.samples as u64)?;
    let tokenizer = load_run_tokenizer(&train, &args.run)?;
    let (mut params, mut buffers) = model.init_params(&mut Rng::new(0), DType::F32)?;
    let ckpt = args.checkpoint.unwrap_or_else(|| args.run.join("checkpoints").join("latest.safetensors"));
    let Restored { step, .. } = checkpoint::load(&ckpt, &model.config, &mut params, &mut buffers, None, None)?;
    let report = evaluate(&model, &params, &mut buffers, &tokenizer, &train.data, args.samples)?;
    println!("{} at step {step}, {} images per split\n{}", model.config.name, args.samples, report.summary());
    let record = json!({
        "dataset": "shapes",
        "model": model.config.name,
        "pretrained": ckpt.display().to_string(),
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
