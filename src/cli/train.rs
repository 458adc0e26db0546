//! `msclip train`: the embedded default trains `tiny` on the shapes world on the CPU.

use std::path::PathBuf;

use clap::Args;
use msclip::Device;
use msclip::train::{Precision, Resume, RunOptions, TokenizerSource, TrainConfig, train};

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Run name: the run lives in <output>/<name>/.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "runs")]
    output: PathBuf,
    /// Training data; only the procedural shapes world is available so far.
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Compute device: cpu (the reference), cuda (an NVIDIA GPU), or emu (the CUDA kernels on
    /// the host's SIMT emulator: slow, for checking the GPU path without a GPU).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Compute precision of the towers: fp32, or bf16 (GPU devices; fp32 masters and loss).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    #[arg(long)]
    steps: Option<u64>,
    /// Alternative to --steps: passes over --epoch-samples samples.
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    #[arg(long, default_value_t = 32_768)]
    epoch_samples: u64,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long)]
    wd: Option<f64>,
    /// Weight decay of the modality-shared weights (MS-CLIP's WD_SHARE).
    #[arg(long)]
    wd_shared: Option<f64>,
    /// Global gradient-norm clip; 0 disables.
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    log_every: Option<u64>,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long)]
    save_every: Option<u64>,
    /// Images per evaluation split.
    #[arg(long)]
    eval_samples: Option<usize>,
    /// Use OpenAI CLIP's BPE instead of one trained on the captions (needs a 49,408-token model).
    #[arg(long)]
    clip_tokenizer: bool,
    /// Continue a run: `latest` or a checkpoint path. The run's saved config.json is used.
    #[arg(long)]
    resume: Option<String>,
}

/// Overrides `field` when the flag was given.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.device.is_gpu() {
        // Fail before any work when the GPU (or this build's kernels) is missing.
        msclip::backend::gpu::driver(args.device)?;
    }
    if args.data != "shapes" {
        anyhow::bail!("data {:?} is not supported yet: only the procedural shapes world (--data shapes)", args.data);
    }
    let mut config = TrainConfig::tiny_default();
    config.name = args.name.clone().unwrap_or_else(|| args.preset.clone());
    config.preset = args.preset;
    config.device = args.device;
    config.precision = args.precision;
    config.output_dir = args.output;
    set(&mut config.batch_size, args.batch_size);
    if let Some(epochs) = args.epochs {
        config.steps = (epochs * args.epoch_samples).div_ceil(config.batch_size as u64);
    }
    set(&mut config.steps, args.steps);
    set(&mut config.lr, args.lr);
    set(&mut config.warmup_steps, args.warmup);
    set(&mut config.weight_decay, args.wd);
    set(&mut config.shared_weight_decay, args.wd_shared);
    set(&mut config.seed, args.seed);
    set(&mut config.log_every, args.log_every);
    set(&mut config.eval_every, args.eval_every);
    set(&mut config.save_every, args.save_every);
    set(&mut config.eval_samples, args.eval_samples);
    if let Some(clip) = args.grad_clip {
        config.grad_clip_norm = (clip > 0.0).then_some(clip);
    }
    if args.clip_tokenizer {
        config.tokenizer = TokenizerSource::Clip;
    }
    let resume = args.resume.map(|r| if r == "latest" { Resume::Latest } else { Resume::Path(r.into()) });
    if resume.is_some() {
        println!("resuming {}: the run's saved config.json applies", config.run_dir().display());
    }
    let summary = train(&config, &RunOptions { resume, ..Default::default() })?;
    println!(
        "done: {} steps, final loss {:.4}; run directory {} (config.json, results.jsonl, checkpoints/, loss.png, accuracy.png)",
        summary.steps_done,
        summary.final_loss,
        summary.run_dir.display()
    );
    Ok(())
}
