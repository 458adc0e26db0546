//! `msclip eval --run runs/NAME`: evaluates a checkpoint of a run and writes the metrics
//! as a CLIP_benchmark-style JSON.

use std::path::PathBuf;

use clap::Args;
use msclip::DType;
use msclip::Rng;
use msclip::eval::evaluate;
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
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.samples == 0 {
        anyhow::bail!("--samples must be at least 1 (images per evaluation split)");
    }
    let (train, model_config) = read_run_config(&args.run)?;
    let output = args.output.unwrap_or_else(|| args.run.join("eval.json"));
    if output.is_dir() {
        anyhow::bail!("--output {} is a directory; give the path of the JSON file to write", output.display());
    }
    let model = ClipModel::new(model_config)?;
    memory::check_evaluation(&model, "--samples", args.samples as u64)?;
    let tokenizer = load_run_tokenizer(&train, &args.run)?;
    let (mut params, mut buffers) = model.init_params(&mut Rng::new(0), DType::F32)?;
    let ckpt = args.checkpoint.unwrap_or_else(|| args.run.join("checkpoints").join("latest.safetensors"));
    let Restored { step, .. } = checkpoint::load(&ckpt, &model.config, &mut params, &mut buffers, None)?;
    let report = evaluate(&model, &params, &mut buffers, &tokenizer, &train.data, args.samples)?;
    println!("{} at step {step}, {} images per split\n{}", model.config.name, args.samples, report.summary());
    let record = json!({
        "dataset": "shapes",
        "model": model.config.name,
        "pretrained": ckpt.display().to_string(),
        "step": step,
        "task": ["zeroshot_classification", "zeroshot_retrieval", "image_caption_selection"],
        "samples_per_split": args.samples,
        "metrics": report.metrics(),
    });
    msclip::files::write_atomically(&output, serde_json::to_string_pretty(&record)?.as_bytes())?;
    println!("metrics written to {}", output.display());
    Ok(())
}
