//! The training loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::json;

use super::checkpoint::{self, TrainingState};
use super::checkpoint_dir::CheckpointDir;
use super::config::{TokenizerSource, TrainConfig};
use super::data::{RankShare, TrainingData};
use super::evaluation::{Evaluation, Evaluations, PLOTTED_RETRIEVAL, RESULTS, Validation};
use super::graph_step::StepIssuer;
use super::log::{StepLine, append_jsonl, progress_bar, read_jsonl, truncate_jsonl_after};
use super::masking::Masker;
use super::plot::{Reference, Series, line_plot};
use super::prefetch::Batches;
use super::readback::Readback;
use super::resume;
use super::run_dir::{self, load_run_tokenizer, read_run_config, save_run_tokenizer, write_run_config};
use super::step::{StepInput, StepState, step_range};
use crate::data::shapes::{Colour, ShapeKind};
use crate::dist::{Collective, Progress};
use crate::error::{Error, Result};
use crate::eval::{self, EvalReport};
use crate::model::{ClipModel, OBJECTIVES};
use crate::nn::ParamStore;
use crate::tensor::{DType, Device, Rng, Tensor};
use crate::text::Tokenizer;

/// Where a resumed run continues from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// The run directory's `checkpoints/latest.safetensors`.
    Latest,
    Path(PathBuf),
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Option<Resume>,
    /// A new run replaces an existing run directory (removed first) instead of refusing it.
    pub overwrite: bool,
    /// Stop (after saving a checkpoint) once this many steps are done, as an interruption
    /// would; the schedule still spans `config.steps`.
    pub stop_after: Option<u64>,
    /// Raised by a signal handler: the run finishes the step under way, saves a checkpoint and
    /// returns [`RunEnd::Interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
    /// No progress bar or console lines (tests).
    pub quiet: bool,
    /// This process as one rank of a data-parallel world (`crate::dist`): it trains on its
    /// share of every batch of `config.batch_size` pairs (the global batch), and only rank 0
    /// writes the run directory (logs, checkpoints, evaluations). None: one process.
    pub ranks: Option<Arc<dyn Collective>>,
    /// Told each step done and the end of the loop: the watchdog's stall check (`crate::dist`).
    pub progress: Option<Progress>,
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// All `config.steps` are done (and evaluated, unless evaluation is off).
    Finished,
    /// Stopped at `stop_after`, with a checkpoint.
    StoppedEarly,
    /// Stopped by the `stop` flag, with a checkpoint.
    Interrupted,
    /// A resumed run that had already finished: nothing was trained or evaluated again.
    AlreadyFinished,
}

#[derive(Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps_done: u64,
    /// The loss of the last step this call trained; NaN when it trained none.
    pub final_loss: f64,
    /// The final shapes-world evaluation (a run on prepared data has its metrics in
    /// results.jsonl).
    pub eval: Option<EvalReport>,
    pub params: ParamStore,
    pub end: RunEnd,
}

/// Weight of the newest loss in the smoothed loss of the console line.
const LOSS_EMA: f64 = 0.05;
const TRAIN_LOG: &str = "train_loss.jsonl";

/// Trains `config`, or resumes the run saved in its directory (whose config.json `config` may
/// change only in what [`resume::changes`] allows), and evaluates at the end. Every check
/// that can refuse the run runs before anything is written.
pub fn train(config: &TrainConfig, options: &RunOptions) -> Result<RunSummary> {
    config.validate()?;
    let model = ClipModel::new(config.model_config()?)?;
    config.objectives.check_model(&model.config)?;
    let share = match &options.ranks {
        Some(ranks) => rank_share(config, ranks.as_ref())?,
        None => RankShare::WHOLE,
    };
    // Rank 0 writes the run directory; the others only read it (a resumed run's checkpoint).
    let writes = share.rank == 0;
    let data = TrainingData::open(config, &model.config)?.shared_out(share);
    let validation = Validation::open(config, &model.config)?;
    let run_dir = config.run_dir();
    let (_lock, changes, tokenizer) = match &options.resume {
        // A trained BPE is a pure function of the data, so every rank makes the same one.
        None if !writes => (None, Vec::new(), run_tokenizer(config, &model, &data)?),
        Some(_) if !writes => (None, Vec::new(), fitting_tokenizer(&model, load_run_tokenizer(config, &run_dir)?)?),
        None => {
            // Made before the run directory, so a tokenizer that does not fit refuses the run
            // before anything is written.
            let tokenizer = run_tokenizer(config, &model, &data)?;
            let lock = run_dir::create_new(&run_dir, options.overwrite)?;
            if config.tokenizer == TokenizerSource::TrainedBpe {
                save_run_tokenizer(&tokenizer, &run_dir)?;
            }
            (Some(lock), Vec::new(), tokenizer)
        }
        Some(_) => {
            let lock = run_dir::open_existing(&run_dir)?;
            let changes = resume::changes(&read_run_config(&run_dir)?.0, config)?;
            (Some(lock), changes, fitting_tokenizer(&model, load_run_tokenizer(config, &run_dir)?)?)
        }
    };
    let quiet = options.quiet || !writes;

    let mut rng = Rng::new(config.seed);
    let mut state = StepState::init(&model, config, &mut rng)?;
    if let Some(ranks) = &options.ranks {
        state = state.across_ranks(Arc::clone(ranks));
    }
    let checkpoints = CheckpointDir::new(run_dir.join("checkpoints"), config.keep_checkpoints);
    let (mut step, mut samples_seen) = (0u64, 0u64);
    if let Some(resume) = &options.resume {
        let path = match resume {
            Resume::Latest => checkpoints.latest(),
            Resume::Path(p) => p.clone(),
        };
        let restored = checkpoint::load(
            &path,
            &model.config,
            &mut state.params,
            &mut state.buffers,
            Some(&mut state.optimizer),
            state.momentum.as_mut(),
        )?;
        if restored.step > config.steps {
            return Err(Error::config(format!(
                "{} is at step {} but the run has {} steps: pass --steps {} or more to continue from it",
                path.display(),
                restored.step,
                config.steps,
                restored.step
            )));
        }
        (step, samples_seen, rng) = (restored.step, restored.samples_seen, restored.rng);
        for log in [TRAIN_LOG, RESULTS].into_iter().filter(|_| writes) {
            truncate_jsonl_after(&run_dir.join(log), step)?;
        }
    }
    if writes && (!changes.is_empty() || options.resume.is_none()) {
        write_run_config(&run_dir, config, &model.config)?;
    }
    let say_now = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    if options.resume.is_some() {
        say_now(&format!("resuming {} at step {step} of {}", run_dir.display(), config.steps));
        for change in &changes {
            say_now(&format!("  changed: {change}"));
        }
    }
    say_now(&data.describe());
    let evaluates = validation.is_on();
    if let Validation::Off(why) = validation {
        say_now(why);
    }
    let evaluates = evaluates && writes;
    let evaluated_at = |step: u64| -> Result<bool> {
        Ok(read_jsonl(&run_dir.join(RESULTS))?.iter().any(|r| r["step"].as_u64() == Some(step)))
    };
    if step == config.steps && (!evaluates || evaluated_at(step)?) {
        if writes {
            write_plots(&run_dir, config)?;
        }
        return Ok(RunSummary {
            run_dir,
            steps_done: step,
            final_loss: f64::NAN,
            eval: None,
            params: state.params,
            end: RunEnd::AlreadyFinished,
        });
    }
    // Initialised (or restored) on the CPU, so every device starts from the same values.
    state.to_device(config.device)?;

    let schedule = config.schedule();
    let end = options.stop_after.unwrap_or(config.steps).min(config.steps);
    let raised = || options.stop.as_ref().is_some_and(|flag| flag.load(Ordering::SeqCst));
    // Ranks stop together: at a console-line step, when any of them was interrupted (a rank
    // that stopped alone would leave the others waiting in a collective).
    let interrupted = |logs: bool| match &options.ranks {
        None => Ok(raised()),
        Some(_) if !logs => Ok(false),
        Some(ranks) => any_rank(ranks.as_ref(), raised(), config.device),
    };
    let mut ended = if end < config.steps { RunEnd::StoppedEarly } else { RunEnd::Finished };
    let bar = (!quiet).then(|| progress_bar(config.steps, step));
    // Console lines go above the bar on a terminal, to stdout otherwise (CI logs).
    let say = |line: &str| match &bar {
        Some(b) if !b.is_hidden() => b.println(line),
        Some(_) => println!("{line}"),
        None => {}
    };
    let loss_log = run_dir.join(TRAIN_LOG);
    let (mut final_loss, mut loss_ema) = (f64::NAN, f64::NAN);
    let mut readback = Readback::new();
    let mut batches = Batches::new(data, &tokenizer, &model.config, config.steps, config.device);
    // A data-parallel step is issued op by op: its collectives are not captured into the
    // step's CUDA graph yet.
    let mut issuer = match &options.ranks {
        Some(_) => StepIssuer::new(&TrainConfig { cuda_graph: false, ..config.clone() }),
        None => StepIssuer::new(config),
    };
    let masker = Masker::new(config, &model.config, &tokenizer)?.map(|m| m.for_rank(share.rank));

    let evaluations = Evaluations { model: &model, tokenizer: &tokenizer, config, run_dir: &run_dir, validation };
    // The curve's first point: the initial weights, at chance.
    if writes && step == 0 && evaluations.quick_due(0) && !evaluated_at(0)? {
        evaluations.record(&mut state, 0, config.quick_eval_samples)?;
    }
    while step < end {
        let started = Instant::now();
        let batch = batches.get(step)?;
        let images = batch.images_on(config.device, config.precision.dtype())?;
        let data_seconds = started.elapsed().as_secs_f64();
        let lr = schedule.lr(step);
        let masks = masker.as_ref().map(|m| m.draw(&batch.tokens, images.dims()[0], step));
        let input = StepInput { images: &images, tokens: &batch.tokens, lr, masks: masks.as_ref() };
        let output = {
            let _range = step_range(step);
            issuer.step(&mut state, &model, config, input)?
        };
        step += 1;
        if let Some(progress) = &options.progress {
            progress.reached(step);
        }
        samples_seen += config.batch_size as u64;
        readback.push(step, lr, data_seconds, output);
        let logs = step.is_multiple_of(config.log_every) || step == end;
        let stopping = step < config.steps && interrupted(logs)?;
        let saves = writes && (step.is_multiple_of(config.save_every) || step == end || stopping);
        let evaluates_now =
            evaluates && config.eval_every > 0 && step.is_multiple_of(config.eval_every) && step < config.steps;
        let quick_now = writes && !evaluates_now && step < config.steps && evaluations.quick_due(step);
        // The host waits for the device only here: on the CPU after every step (nothing to wait
        // for), on a GPU when the numbers are needed.
        // Every rank reads its steps back (so none piles up unread outputs); rank 0 logs them.
        if config.device == Device::Cpu || logs || saves || evaluates_now {
            let read = readback.read(&checkpoints.describe())?;
            // Every step's loss goes to train_loss.jsonl; the logit scale (a read of the
            // device) only with a console line.
            let logit_scale = if logs { Some(state.params.get(model.logit_scale()).item()?.exp()) } else { None };
            for r in &read.steps {
                final_loss = r.loss;
                loss_ema = if loss_ema.is_nan() { r.loss } else { (1.0 - LOSS_EMA) * loss_ema + LOSS_EMA * r.loss };
                let mut record = json!({ "step": r.step, "loss": r.loss, "loss_ema": loss_ema, "lr": r.lr,
                    "grad_norm": r.grad_norm, "samples_per_second": config.batch_size as f64 / read.seconds_per_step });
                for (name, value) in &r.terms {
                    record[format!("loss_{name}")] = json!(value);
                }
                if let Some(scale) = logit_scale.filter(|_| r.step == step) {
                    record["logit_scale"] = json!(scale);
                }
                if writes {
                    append_jsonl(&loss_log, &record)?;
                }
            }
            if let Some(b) = &bar {
                b.set_position(step);
                b.set_message(format!("loss {final_loss:.4}"));
            }
            let last = read.steps.last().expect("this step was pending");
            if let Some(logit_scale) = logit_scale {
                let line = StepLine {
                    step: step - 1,
                    total_steps: config.steps,
                    samples_seen,
                    data_seconds: last.data_seconds,
                    batch_seconds: read.seconds_per_step,
                    batch_size: config.batch_size,
                    lr: last.lr,
                    logit_scale,
                    loss: last.loss,
                    loss_ema,
                };
                say(&line.to_string());
            }
        }
        if saves {
            checkpoints.save(&TrainingState {
                config: &model.config,
                params: &state.params,
                buffers: &state.buffers,
                optimizer: &state.optimizer,
                momentum: state.momentum.as_ref(),
                step,
                samples_seen,
                rng: &rng,
            })?;
        }
        if stopping {
            ended = RunEnd::Interrupted;
            break;
        }
        if quick_now {
            evaluations.record(&mut state, step, config.quick_eval_samples)?;
        }
        if evaluates_now && let Some(evaluation) = evaluations.record(&mut state, step, config.eval_samples)? {
            say(&evaluation.summary());
        }
    }
    if let Some(progress) = &options.progress {
        progress.finished();
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut eval = None;
    if writes
        && step == config.steps
        && let Some(evaluation) = evaluations.record(&mut state, step, config.eval_samples)?
    {
        say_now(&evaluation.summary());
        if let Evaluation::ShapesWorld(report) = evaluation {
            eval = Some(report);
        }
    }
    if writes {
        write_plots(&run_dir, config)?;
    }
    Ok(RunSummary { run_dir, steps_done: step, final_loss, eval, params: state.params, end: ended })
}

/// This rank's share of every batch, after checking the global batch splits evenly.
fn rank_share(config: &TrainConfig, ranks: &dyn Collective) -> Result<RankShare> {
    let share = RankShare { rank: ranks.rank(), ranks: ranks.world_size() };
    if !config.batch_size.is_multiple_of(share.ranks) || config.batch_size < 2 * share.ranks {
        return Err(Error::config(format!(
            "--batch-size {} is the global batch: it must split evenly over the {} ranks, at least 2 pairs each",
            config.batch_size, share.ranks
        )));
    }
    Ok(share)
}

/// Whether `mine` is true on any rank (one all-reduce, read back: the host waits for it).
fn any_rank(ranks: &dyn Collective, mine: bool, device: Device) -> Result<bool> {
    let flag = Tensor::scalar(f64::from(u8::from(mine)), DType::F32).to_device(device)?;
    Ok(ranks.all_reduce_sum(&flag)?.item()? > 0.0)
}

/// The tokenizer a new run of `config` starts with: a BPE trained on the training captions,
/// CLIP's, or the configured file; refused when `model` cannot embed every id.
pub fn new_run_tokenizer(config: &TrainConfig, model: &ClipModel) -> Result<Tokenizer> {
    run_tokenizer(config, model, &TrainingData::open(config, &model.config)?)
}

/// [`new_run_tokenizer`] for the training data `data`, already open.
fn run_tokenizer(config: &TrainConfig, model: &ClipModel, data: &TrainingData) -> Result<Tokenizer> {
    let tokenizer = match config.tokenizer {
        TokenizerSource::TrainedBpe => {
            let corpus = data.bpe_corpus();
            Tokenizer::train_bpe(corpus.iter().map(String::as_str), model.config.text.vocab)?
        }
        // These two read nothing from the run directory.
        _ => load_run_tokenizer(config, &config.run_dir())?,
    };
    fitting_tokenizer(model, tokenizer)
}

/// `tokenizer`, when the model embeds every id it produces.
fn fitting_tokenizer(model: &ClipModel, tokenizer: Tokenizer) -> Result<Tokenizer> {
    if tokenizer.vocab_size() > model.config.text.vocab {
        return Err(Error::config(format!(
            "the tokenizer has {} tokens but model {} embeds only {}",
            tokenizer.vocab_size(),
            model.config.name,
            model.config.text.vocab
        )));
    }
    Ok(tokenizer)
}

/// loss.png from train_loss.jsonl and accuracy.png from results.jsonl, each with its chance
/// level: a loss of ln(batch) (uniform logits); on the shapes world 1 / classes for the
/// zero-shot factors and one half for binding. A run on prepared data draws its validation
/// retrieval instead, when it has a `--val-data` to draw.
fn write_plots(run_dir: &Path, config: &TrainConfig) -> Result<()> {
    let column = |rows: &[serde_json::Value], key: &str| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?))).collect()
    };
    // train_loss.jsonl's step k is the k-th batch, whose loss the weights after k - 1
    // updates computed: drawn at k - 1, so the curve starts at step 0 (the initial weights) on
    // the same axis as the evaluations (results.jsonl's step k: after k updates).
    let updates_before = |points: Vec<(f64, f64)>| points.into_iter().map(|(x, y)| (x - 1.0, y)).collect();
    let losses = read_jsonl(&run_dir.join(TRAIN_LOG))?;
    let mut loss_series = vec![
        Series { name: "loss (every step)".into(), points: updates_before(column(&losses, "loss")) },
        Series { name: "loss (EMA)".into(), points: updates_before(column(&losses, "loss_ema")) },
    ];
    // With several objectives, each one's unweighted value.
    for name in OBJECTIVES {
        let points = updates_before(column(&losses, &format!("loss_{name}")));
        if !points.is_empty() {
            loss_series.push(Series { name: format!("{name} (unweighted)"), points });
        }
    }
    let batch_size = config.batch_size;
    let uniform = Reference { name: format!("chance: ln {batch_size}"), y: (batch_size as f64).ln() };
    line_plot(&run_dir.join("loss.png"), ("contrastive loss", "updates done", "loss"), &loss_series, &[uniform])?;
    let results = read_jsonl(&run_dir.join(RESULTS))?;
    let curves = |keys: &[&str]| -> Vec<Series> {
        keys.iter()
            .map(|&key| Series { name: key.to_string(), points: column(&results, key) })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    if config.train_data.is_some() {
        let retrieval = curves(PLOTTED_RETRIEVAL);
        if retrieval.is_empty() {
            return Ok(());
        }
        let title = ("validation retrieval", "updates done", "recall");
        return line_plot(&run_dir.join("accuracy.png"), title, &retrieval, &[]);
    }
    let (colours, shapes) = (Colour::ALL.len(), ShapeKind::ALL.len());
    let mut chance = vec![Reference { name: format!("chance: colour (1/{colours})"), y: 1.0 / colours as f64 }];
    if shapes == colours {
        chance[0].name = format!("chance: colour, shape (1/{colours})"); // one line, not two on top of each other
    } else {
        chance.push(Reference { name: format!("chance: shape (1/{shapes})"), y: 1.0 / shapes as f64 });
    }
    chance.push(Reference { name: "chance: binding (1/2)".into(), y: 0.5 });
    let title = ("zero-shot accuracy", "updates done", "acc1");
    line_plot(&run_dir.join("accuracy.png"), title, &curves(eval::PLOTTED_METRICS), &chance)
}
