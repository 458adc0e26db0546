//! A run's evaluations, each appended to results.jsonl as one line of metrics: on the shapes
//! world every probe of [`eval::evaluate`] (zero-shot per factor, retrieval, binding, modality
//! gap, localisation); on a prepared dataset, whose pairs have no factors to probe, the retrieval
//! of the `--val-data` dataset with CLIP_benchmark's metric names ([`retrieval`]), or nothing
//! (the loss alone) without one.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::TrainConfig;
use super::data::check_resolution;
use super::log::append_jsonl;
use super::step::StepState;
use crate::data::shards::PreparedDataset;
use crate::error::Result;
use crate::eval::benchmark::{Retrieval, retrieval};
use crate::eval::{self, EvalReport};
use crate::model::{ClipModel, ModelConfig};
use crate::text::Tokenizer;

pub const RESULTS: &str = "results.jsonl";

/// The validation retrieval curves accuracy.png draws for a run on prepared data.
pub const PLOTTED_RETRIEVAL: &[&str] =
    &["image_retrieval_recall@1", "image_retrieval_recall@5", "text_retrieval_recall@1", "text_retrieval_recall@5"];

/// What a run's evaluations measure.
pub enum Validation {
    ShapesWorld,
    /// Retrieval on a prepared dataset (`--val-data`).
    Retrieval {
        dir: PathBuf,
        dataset: Box<PreparedDataset>,
    },
    /// Nothing; the reason, for the log.
    Off(&'static str),
}

impl Validation {
    /// What `config`'s evaluations measure; a validation dataset is opened and checked against
    /// `model` now, so a wrong one refuses the run before it trains.
    pub fn open(config: &TrainConfig, model: &ModelConfig) -> Result<Self> {
        if config.eval_samples == 0 {
            return Ok(Validation::Off("evaluation is off (--eval-samples 0)"));
        }
        if config.train_data.is_none() {
            return Ok(Validation::ShapesWorld);
        }
        let Some(dir) = &config.val_data else {
            return Ok(Validation::Off(
                "no --val-data: a run on prepared data reports its loss only (the shapes-world probes do not apply)",
            ));
        };
        let dataset = PreparedDataset::open(dir)?;
        check_resolution("--val-data", dir, &dataset, model)?;
        Ok(Validation::Retrieval { dir: dir.clone(), dataset: Box::new(dataset) })
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, Validation::Off(_))
    }
}

/// One evaluation's results.
pub enum Evaluation {
    ShapesWorld(EvalReport),
    Retrieval(Retrieval),
}

impl Evaluation {
    /// What the console shows.
    pub fn summary(&self) -> String {
        match self {
            Evaluation::ShapesWorld(report) => report.summary(),
            Evaluation::Retrieval(r) => format!("validation retrieval: {}", r.summary()),
        }
    }
}

/// What evaluating the run needs besides its weights.
pub struct Evaluations<'a> {
    pub model: &'a ClipModel,
    pub tokenizer: &'a Tokenizer,
    pub config: &'a TrainConfig,
    pub run_dir: &'a Path,
    pub validation: Validation,
}

impl Evaluations<'_> {
    /// Whether a quick evaluation (fewer images, between the full ones) follows `step`: on
    /// the shapes world, for accuracy.png's curve.
    pub fn quick_due(&self, step: u64) -> bool {
        let (every, samples) = (self.config.quick_eval_every, self.config.quick_eval_samples);
        matches!(self.validation, Validation::ShapesWorld) && samples > 0 && every > 0 && step.is_multiple_of(every)
    }

    /// Evaluates `state`'s weights after `step` updates (on the shapes world, on `samples`
    /// images per split; a validation dataset whole) and appends the metrics to results.jsonl.
    pub fn record(&self, state: &mut StepState, step: u64, samples: usize) -> Result<Option<Evaluation>> {
        let (params, buffers) = (&state.params, &mut state.buffers);
        let mut record = serde_json::Map::new();
        record.insert("step".into(), json!(step));
        let (evaluation, metrics) = match &self.validation {
            Validation::Off(_) => return Ok(None),
            Validation::ShapesWorld => {
                let report = eval::evaluate(self.model, params, buffers, self.tokenizer, &self.config.data, samples)?;
                record.insert("eval_samples".into(), json!(samples));
                let metrics = report.metrics();
                (Evaluation::ShapesWorld(report), metrics)
            }
            Validation::Retrieval { dir, dataset } => {
                let result = retrieval(self.model, params, buffers, self.tokenizer, dataset)?;
                record.insert("val_data".into(), json!(dir.display().to_string()));
                record.insert("val_images".into(), json!(result.images));
                record.insert("val_captions".into(), json!(result.captions));
                let metrics = result.metrics();
                (Evaluation::Retrieval(result), metrics)
            }
        };
        for (k, v) in metrics {
            record.insert(k, json!(v));
        }
        append_jsonl(&self.run_dir.join(RESULTS), &record)?;
        Ok(Some(evaluation))
    }
}
