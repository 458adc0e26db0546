//! `msclip eval --run runs/NAME`: evaluates a checkpoint of a run and writes the metrics
//! as a CLIP_benchmark-style JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use msclip::DType;
use msclip::eval::evaluate;
use msclip::model::{ClipModel, ModelConfig};
use msclip::text::Tokenizer;
use msclip::train::{TokenizerSource, TrainConfig, checkpoint};
use msclip::{Rng, train::checkpoint::Restored};
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
    let config_path = args.run.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;
    let train: TrainConfig = serde_json::from_value(saved["train"].clone()).context("config.json: train section")?;
    let model_config: ModelConfig =
        serde_json::from_value(saved["model"].clone()).context("config.json: model section")?;
    let model = ClipModel::new(model_config)?;
    let tokenizer = match &train.tokenizer {
        TokenizerSource::TrainedBpe => Tokenizer::from_file(&args.run.join("tokenizer.json"))?,
        TokenizerSource::Clip => Tokenizer::clip()?,
        TokenizerSource::File(path) => Tokenizer::from_file(path)?,
    };
    let (mut params, mut buffers) = model.init_params(&mut Rng::new(0), DType::F32)?;
    let ckpt = args.checkpoint.unwrap_or_else(|| args.run.join("checkpoints").join("latest.safetensors"));
    let Restored { step, .. } = checkpoint::load(&ckpt, &model.config, &mut params, &mut buffers, None)?;
    let report = evaluate(&model, &params, &mut buffers, &tokenizer, &train.data, args.samples)?;
    println!("{} at step {step}, {} images per split\n{}", model.config.name, args.samples, report.summary());
    let output = args.output.unwrap_or_else(|| args.run.join("eval.json"));
    let record = json!({
        "dataset": "shapes",
        "model": model.config.name,
        "pretrained": ckpt.display().to_string(),
        "step": step,
        "task": ["zeroshot_classification", "zeroshot_retrieval", "image_caption_selection"],
        "samples_per_split": args.samples,
        "metrics": report.metrics(),
    });
    checkpoint::write_atomically(&output, serde_json::to_string_pretty(&record)?.as_bytes())?;
    println!("metrics written to {}", output.display());
    Ok(())
}
