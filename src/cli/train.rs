//! `msclip train`: the embedded default trains `tiny` on the shapes world on the CPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use msclip::Device;
use msclip::model::Objectives;
use msclip::text::CLIP_VOCAB;
use msclip::train::{
    Precision, PreparedData, Resume, RunEnd, RunOptions, TokenizerSource, TrainConfig, read_run_config,
    run_dir_of_checkpoint, train,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Exit status of a run stopped by Ctrl-C or SIGTERM (the shell's 128 + SIGINT).
const INTERRUPTED_EXIT: i32 = 130;

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset [default: tiny]. Every preset trains on the shapes world, rendered at the
    /// preset's image size, or on a prepared dataset of that size (--data DIR).
    #[arg(long)]
    preset: Option<String>,
    /// Run name: the run lives in <output>/<name>/ [default: the preset]. One plain directory
    /// name; a new run refuses an existing run directory (see --resume, --overwrite).
    #[arg(long)]
    name: Option<String>,
    /// Folder that holds the run directories [default: runs].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Training data [default: shapes, or the resumed run's]: `shapes` (the procedural shapes
    /// world) or a folder written by `msclip prepare` at the preset's image size, visited in
    /// a new seeded order every epoch (docs/data.md). Its captions are tokenized again with
    /// the run's tokenizer: a BPE trained on them, or CLIP's for presets with CLIP's vocabulary.
    #[arg(long)]
    data: Option<String>,
    /// A prepared dataset whose image and text retrieval (CLIP_benchmark's metrics) the
    /// evaluations of a run on --data DIR measure; without it such a run reports its loss only.
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Compute device [default: cpu, or the resumed run's]: cpu (the reference), cuda (an
    /// NVIDIA GPU), or emu (the CUDA kernels on the host's SIMT emulator: slow, for checking
    /// the GPU path without a GPU).
    #[arg(long)]
    device: Option<Device>,
    /// Compute precision of the towers [default: fp32, or the resumed run's]: fp32, or bf16
    /// (GPU devices; fp32 masters and loss).
    #[arg(long)]
    precision: Option<Precision>,
    /// On a GPU device [default: on, or the resumed run's]: every step after the first is one
    /// launch of a captured CUDA graph of the whole step, on that step's batch; off issues
    /// every kernel from the host (per-op profiling).
    #[arg(long)]
    cuda_graph: Option<Switch>,
    /// Optimizer steps [default: 650]. On --resume, a new total: the run is extended (or
    /// shortened, not below its checkpoint) and the cosine schedule spans the new total.
    #[arg(long)]
    steps: Option<u64>,
    /// Alternative to --steps: passes over the prepared dataset (its whole batches), or over
    /// --epoch-samples shapes-world samples.
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Samples in a shapes-world epoch [default: 32768].
    #[arg(long)]
    epoch_samples: Option<u64>,
    /// Image-text pairs per step [default: 128]; at least 2, at most what fits in memory.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 1e-3; the B-scale CLIP and MS-CLIP presets start from
    /// their projects' recipes, docs/training.md].
    #[arg(long)]
    lr: Option<f64>,
    /// Floor of the cosine schedule [default: --lr / 100].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps [default: 50].
    #[arg(long)]
    warmup: Option<u64>,
    /// Weight decay of the unshared weight matrices [default: 0.05].
    #[arg(long, allow_hyphen_values = true)]
    wd: Option<f64>,
    /// Weight decay of the modality-shared weights (MS-CLIP's WD_SHARE) [default: 0.2].
    #[arg(long, allow_hyphen_values = true)]
    wd_shared: Option<f64>,
    /// Global gradient-norm clip [default: 1.0; none for the B-scale presets, as open_clip
    /// and MS-CLIP train]; exactly 0 turns clipping off.
    #[arg(long, allow_hyphen_values = true)]
    grad_clip: Option<f64>,
    /// Clamp the logit scale after every step to ln of this [default: 100, as open_clip; none
    /// for the MS-CLIP B-scale presets, whose code has no clamp]; exactly 0 turns it off.
    #[arg(long, allow_hyphen_values = true)]
    logit_scale_max: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Steps between console lines [default: 50]. train_loss.jsonl gets every step.
    #[arg(long)]
    log_every: Option<u64>,
    /// Steps between evaluations [default: 325]; 0 evaluates only at the end.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Steps between checkpoints [default: 500]; a checkpoint is also written at the end and
    /// when the run is interrupted.
    #[arg(long)]
    save_every: Option<u64>,
    /// How many step_N checkpoints to keep besides latest [default: 3].
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// Images per evaluation split [default: 1000]; 0 turns evaluation off.
    #[arg(long)]
    eval_samples: Option<usize>,
    /// Steps between quick evaluations on fewer images, for accuracy.png's curve [default: 50];
    /// 0 turns them off.
    #[arg(long)]
    quick_eval_every: Option<u64>,
    /// Images per split in a quick evaluation [default: 200].
    #[arg(long)]
    quick_eval_samples: Option<usize>,
    /// Shapes-world training samples in groups of this many that share colour, size and
    /// position and differ in shape, hard negatives for the contrast [default: the preset's
    /// data config; 1 turns grouping off].
    #[arg(long)]
    hard_negatives: Option<usize>,
    /// Probability that a shapes-world training caption leaves out the colour [default: the
    /// preset's data config].
    #[arg(long)]
    colour_dropout: Option<f64>,
    /// Training objectives and their weights [default: itc=1; itc=1,xmc=1 for the single-tower
    /// presets tiny-oner, oner-b32, oner-b16, as OneR trains]: comma-separated name=weight
    /// pairs of itc (CLIP's symmetric contrast), xmc (OneR's cross-modal mixup contrast, each
    /// modality against the normalised mean of its pair's embeddings), cmc (the joint
    /// image+caption sequence against that mean) and cic (the joint sequence with each modality
    /// attending only to the other, against that mean); cmc and cic need a single-tower preset;
    /// mlm (masked language modelling, bidirectional text encoders: the single-tower presets)
    /// and mim (masked patches' pixels regressed, patchify stems) train beside a contrastive
    /// one. E.g. itc=1,xmc=1,cic=1; add through-mixture to let gradients flow through the
    /// mixture target.
    #[arg(long, value_parser = parse_objectives)]
    loss: Option<Objectives>,
    /// Make the mixture targets of xmc, cmc and cic with a momentum copy of the model (MoCo v3
    /// style) of this decay, e.g. 0.99, updated after every step; default: the model's own.
    #[arg(long)]
    momentum_targets: Option<f64>,
    /// The share of each caption's word tokens --loss mlm masks, whole words [default: 0.15].
    #[arg(long)]
    mlm_ratio: Option<f64>,
    /// Independently masked copies of each caption --loss mlm predicts per step [default: 2].
    #[arg(long)]
    mlm_copies: Option<usize>,
    /// The share of each image's patches --loss mim masks [default: 0.4].
    #[arg(long)]
    mim_ratio: Option<f64>,
    /// Add a learned modality-type embedding to every image and text token (as ViLT and M3AE
    /// do; an option for OneR, whose use of one is not confirmed).
    #[arg(long)]
    type_embedding: bool,
    /// Use OpenAI CLIP's BPE instead of one trained on the captions (needs a 49,408-token model).
    #[arg(long)]
    clip_tokenizer: bool,
    /// Continue a run: `latest` (the run named by --output/--name) or a checkpoint path (its own
    /// run). The run's config.json applies; --steps, --device, --precision and the logging,
    /// evaluation and checkpoint flags may change it, any other flag that differs is refused.
    #[arg(long)]
    resume: Option<String>,
    /// Replace an existing run directory of the same name (deleted first) instead of refusing.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Data-parallel training on this machine's first N GPUs: starts N processes of this
    /// command as torchrun would (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which
    /// meet over NCCL; --batch-size is the global batch, split evenly. Under torchrun or a
    /// cluster launcher that sets those variables, leave it out (docs/scaling.md).
    #[arg(long)]
    nproc: Option<usize>,
    /// A data-parallel run stops, every rank with an error, when no rank finished a step for
    /// this many seconds: a rank is stuck and the others wait for it. An evaluation or
    /// checkpoint on rank 0 mid-run must fit in it. 0: no limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    stall_timeout: u64,
}

/// `--loss`, for clap (also `bench step` and `profile step`).
pub(crate) fn parse_objectives(spec: &str) -> Result<Objectives, String> {
    Objectives::parse(spec).map_err(|e| e.to_string())
}

/// Overrides `field` when the flag was given.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if let Some(nproc) = args.nproc {
        return super::world::launch_local(nproc);
    }
    if args.device.is_some_and(|d| d.is_gpu()) {
        // Fail before any work when the GPU (or this build's kernels) is missing.
        msclip::backend::gpu::driver(args.device.expect("checked"))?;
    }
    let (mut config, resume) = base_config(&args)?;
    apply_data(&mut config, &args, resume.is_some())?;
    apply_flags(&mut config, &args)?;
    config.validate()?;
    let world = super::world::join_world(&config, Duration::from_secs(args.stall_timeout))?;
    let ranks = world.as_ref().map(|w| w.ranks());
    // Each process holds its share of the global batch.
    let mut per_process = config.clone();
    per_process.batch_size /= ranks.as_ref().map_or(1, |r| r.world_size());
    msclip::train::memory::check_training(&per_process)?;
    let stop = Arc::new(AtomicBool::new(false));
    install_interrupt_handler(stop.clone())?;
    let rank = ranks.as_ref().map_or(0, |r| r.rank());
    let progress = world.as_ref().map(|w| w.progress());
    let options =
        RunOptions { resume, overwrite: args.overwrite, stop: Some(stop), ranks, progress, ..Default::default() };
    let summary = train(&config, &options)?;
    // Before any exit below, so that the other ranks do not take this one's for a death.
    if let Some(world) = world {
        world.finish()?;
    }
    if rank != 0 {
        // Rank 0 reports the run.
        return Ok(());
    }
    let run_dir = summary.run_dir.display();
    match summary.end {
        RunEnd::Finished => println!(
            "done: {} steps, final loss {:.4}; run directory {run_dir} (config.json, results.jsonl, checkpoints/, loss.png, accuracy.png)",
            summary.steps_done, summary.final_loss
        ),
        RunEnd::AlreadyFinished => println!(
            "{run_dir} is already finished ({} of {} steps, evaluated); pass --steps with a larger total to extend it",
            summary.steps_done, config.steps
        ),
        RunEnd::StoppedEarly | RunEnd::Interrupted => {
            eprintln!(
                "interrupted after step {} of {}; checkpoint saved. Continue with: msclip train --resume latest --output {} --name {}",
                summary.steps_done,
                config.steps,
                shell_word(&config.output_dir.display().to_string()),
                shell_word(&config.name)
            );
            std::process::exit(INTERRUPTED_EXIT);
        }
    }
    Ok(())
}

/// The config a run starts from: the preset's defaults for a new run; for a resumed run, its
/// saved config.json, located where the run directory now is.
fn base_config(args: &TrainArgs) -> anyhow::Result<(TrainConfig, Option<Resume>)> {
    let output = args.output.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let Some(resume) = &args.resume else {
        let preset = args.preset.as_deref().unwrap_or("tiny");
        let mut config = TrainConfig::for_preset(preset)?;
        config.output_dir = output;
        set(&mut config.name, args.name.clone());
        return Ok((config, None));
    };
    let (run_dir, resume) = if resume == "latest" {
        let name = args.name.clone().or_else(|| args.preset.clone()).unwrap_or_else(|| "tiny".into());
        msclip::train::validate_run_name(&name)?;
        (output.join(name), Resume::Latest)
    } else {
        let checkpoint = PathBuf::from(resume);
        let run_dir = run_dir_of_checkpoint(&checkpoint)?;
        if args.name.is_some() || args.output.is_some() {
            let own_name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let named = output.join(args.name.as_deref().unwrap_or(&own_name));
            if !same_path(&named, &run_dir) {
                anyhow::bail!(
                    "--resume {resume} belongs to the run {}, not to {} (named by --output/--name)",
                    run_dir.display(),
                    named.display()
                );
            }
        }
        (run_dir, Resume::Path(checkpoint))
    };
    let (mut config, _) = read_run_config(&run_dir)?;
    // Where the run is now, which is not always where it was created.
    config.name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    config.output_dir = run_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(preset) = &args.preset {
        config.preset = preset.clone(); // refused by the resume check when it differs
    }
    Ok((config, Some(resume)))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `--data` and `--val-data`. A new run on prepared data with a model that embeds CLIP's
/// vocabulary reads the captions with CLIP's tokenizer, as open_clip and MS-CLIP do; a
/// smaller model trains a BPE on them.
fn apply_data(config: &mut TrainConfig, args: &TrainArgs, resuming: bool) -> anyhow::Result<()> {
    if let Some(data) = &args.data {
        // On a resumed run, data that differs from the run's is refused by the resume check.
        config.train_data = match data.as_str() {
            "shapes" => None,
            dir => Some(PreparedData::read(Path::new(dir))?),
        };
        if config.train_data.is_some() && !resuming && config.model_config()?.text.vocab == CLIP_VOCAB {
            config.tokenizer = TokenizerSource::Clip;
        }
    }
    let shapes_only = [
        ("--hard-negatives", args.hard_negatives.is_some()),
        ("--colour-dropout", args.colour_dropout.is_some()),
        ("--epoch-samples", args.epoch_samples.is_some()),
    ];
    if config.train_data.is_some()
        && let Some((flag, _)) = shapes_only.iter().find(|(_, given)| *given)
    {
        anyhow::bail!("{flag} belongs to the shapes world; this run trains on a prepared dataset");
    }
    if let Some(dir) = &args.val_data {
        config.val_data = Some(std::path::absolute(dir)?);
    }
    Ok(())
}

/// Applies the flags that were given to `config`, checking what clap cannot.
fn apply_flags(config: &mut TrainConfig, args: &TrainArgs) -> anyhow::Result<()> {
    set(&mut config.device, args.device);
    set(&mut config.precision, args.precision);
    set(&mut config.cuda_graph, args.cuda_graph.map(|s| s == Switch::On));
    set(&mut config.batch_size, args.batch_size);
    if let Some(epochs) = args.epochs {
        let batch = config.batch_size.max(1) as u64;
        let epoch_samples = match &config.train_data {
            // Whole batches: an epoch drops the remainder (docs/data.md).
            Some(data) => (data.samples as u64 / batch) * batch,
            None => args.epoch_samples.unwrap_or(32_768),
        };
        if epochs == 0 || epoch_samples == 0 {
            anyhow::bail!(
                "--epochs and the samples of an epoch (--epoch-samples, or one batch of the dataset) must be at least 1"
            );
        }
        let samples = epochs.checked_mul(epoch_samples).ok_or_else(|| {
            anyhow::anyhow!("--epochs {epochs} x {epoch_samples} samples an epoch overflows a 64-bit sample count")
        })?;
        config.steps = samples.div_ceil(batch);
    }
    set(&mut config.steps, args.steps);
    if let Some(lr) = args.lr.filter(|&lr| lr != config.lr) {
        // The floor keeps its ratio to the peak unless given.
        config.min_lr = lr * (config.min_lr / config.lr);
        config.lr = lr;
    }
    set(&mut config.min_lr, args.min_lr);
    set(&mut config.warmup_steps, args.warmup);
    set(&mut config.weight_decay, args.wd);
    set(&mut config.shared_weight_decay, args.wd_shared);
    set(&mut config.seed, args.seed);
    set(&mut config.log_every, args.log_every);
    set(&mut config.eval_every, args.eval_every);
    set(&mut config.save_every, args.save_every);
    set(&mut config.keep_checkpoints, args.keep_checkpoints);
    set(&mut config.eval_samples, args.eval_samples);
    set(&mut config.quick_eval_every, args.quick_eval_every);
    set(&mut config.quick_eval_samples, args.quick_eval_samples);
    set(&mut config.data.hard_negative_group, args.hard_negatives);
    set(&mut config.data.colour_dropout, args.colour_dropout);
    set(&mut config.objectives, args.loss.clone());
    set(&mut config.mlm_ratio, args.mlm_ratio);
    set(&mut config.mlm_copies, args.mlm_copies);
    set(&mut config.mim_ratio, args.mim_ratio);
    if let Some(clip) = args.grad_clip {
        // Exactly 0 turns clipping off; anything else must be a valid norm (checked by validate).
        config.grad_clip_norm = (clip != 0.0).then_some(clip);
    }
    if let Some(max) = args.logit_scale_max {
        config.logit_scale_max = (max != 0.0).then_some(max);
    }
    if args.clip_tokenizer {
        config.tokenizer = TokenizerSource::Clip;
    }
    if args.momentum_targets.is_some() {
        config.momentum_targets = args.momentum_targets;
    }
    if args.type_embedding {
        config.type_embedding = true;
    }
    Ok(())
}

/// Ctrl-C or SIGTERM raises `stop`: the run finishes its step, saves and exits. A second one
/// exits at once (the checkpoint on disk is whole: files are written atomically).
fn install_interrupt_handler(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting now; the last checkpoint on disk is intact");
            std::process::exit(INTERRUPTED_EXIT);
        }
        eprintln!("\ninterrupt: finishing this step and saving a checkpoint (interrupt again to exit at once)");
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))
}

/// `s` quoted for a POSIX shell when it needs quoting.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
