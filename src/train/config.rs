//! Everything a training run is configured by, saved as `runs/<name>/config.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::data::PreparedData;
use super::recipe::Recipe;
use super::schedule::CosineSchedule;
use crate::data::shapes::ShapesConfig;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Objectives};
use crate::tensor::{DType, Device};

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerSource {
    /// A BPE of the model's vocabulary size trained on the training captions, the shapes
    /// world's or a prepared dataset's (the default, but for B-scale presets on prepared data).
    TrainedBpe,
    /// OpenAI CLIP's 49,408-token BPE.
    Clip,
    /// Any tokenizer.json.
    File(PathBuf),
}

/// The dtype the towers compute in. Master weights, optimizer state and the loss stay fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 weight copies and activations (fp32 accumulation and statistics inside the
    /// kernels); GPU devices only.
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::config(format!("unknown precision {other:?}: fp32 or bf16"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub name: String,
    pub preset: String,
    pub output_dir: PathBuf,
    pub seed: u64,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Weight decay of the unshared weight matrices.
    pub weight_decay: f64,
    /// Weight decay and lr multiplier of the modality-shared weights (MS-CLIP's WD_SHARE,
    /// LR_SHARE / LR).
    pub shared_weight_decay: f64,
    pub shared_lr_scale: f64,
    pub grad_clip_norm: Option<f64>,
    /// After each step the logit scale is clamped to [0, ln(max)], as open_clip does (100);
    /// None: never (MS-CLIP's code has no clamp).
    pub logit_scale_max: Option<f64>,
    pub log_every: u64,
    pub eval_every: u64,
    pub save_every: u64,
    /// How many `step_N` checkpoints to keep besides `latest` (the newest are kept).
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Images per evaluation split; 0 turns evaluation off.
    pub eval_samples: usize,
    /// Steps between quick evaluations (on `quick_eval_samples` images per split, between the
    /// full ones and at step 0) that draw accuracy.png's curve; 0: none (runs from before they
    /// existed).
    #[serde(default)]
    pub quick_eval_every: u64,
    #[serde(default = "default_quick_eval_samples")]
    pub quick_eval_samples: usize,
    pub tokenizer: TokenizerSource,
    /// The shapes world: what the run trains on unless `train_data` names a prepared dataset,
    /// and what the shapes-world evaluation renders.
    pub data: ShapesConfig,
    /// A dataset written by `msclip prepare` to train on (`--data DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_data: Option<PreparedData>,
    /// A prepared dataset whose retrieval the evaluations of a run on prepared data measure
    /// (`--val-data DIR`), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_data: Option<PathBuf>,
    /// Where the model trains: the CPU reference, a GPU, or the GPU backend on the emulator.
    #[serde(default)]
    pub device: Device,
    #[serde(default)]
    pub precision: Precision,
    /// On a GPU device, every step after the first is a launch of one captured graph of the
    /// whole step (see `train::graph_step`); false issues every step op by op (per-op
    /// profiling). Nothing learnt depends on it beyond rounding.
    #[serde(default = "default_cuda_graph")]
    pub cuda_graph: bool,
    /// The weighted objectives (`--loss`); runs from before there was a choice trained CLIP's
    /// contrast alone.
    #[serde(default)]
    pub objectives: Objectives,
    /// The preset with a modality-type embedding on every token (`--type-embedding`,
    /// [`ModelConfig::type_embedding`]).
    #[serde(default)]
    pub type_embedding: bool,
    /// The decay of a momentum copy of the model whose embeddings make the mixture targets of
    /// XMC, CMC and CIC (`--momentum-targets`, MoCo v3 style); None: the trained model's own.
    #[serde(default)]
    pub momentum_targets: Option<f64>,
    /// MLM's share of each caption's word tokens masked (`--mlm-ratio`; BERT's and OneR's 15%).
    #[serde(default = "default_mlm_ratio")]
    pub mlm_ratio: f64,
    /// Independently masked copies of each caption per step (`--mlm-copies`; OneR's collator
    /// makes two).
    #[serde(default = "default_mlm_copies")]
    pub mlm_copies: usize,
    /// MIM's share of each image's patches masked (`--mim-ratio`; BEiT's 40%, for a model that,
    /// as BEiT and SimMIM do, keeps the masked patches as mask tokens).
    #[serde(default = "default_mim_ratio")]
    pub mim_ratio: f64,
}

fn default_mlm_ratio() -> f64 {
    0.15
}

fn default_mlm_copies() -> usize {
    2
}

fn default_mim_ratio() -> f64 {
    0.4
}

fn default_quick_eval_samples() -> usize {
    200
}

fn default_cuda_graph() -> bool {
    true
}

impl TrainConfig {
    /// The embedded default: `tiny` on the shapes world, minutes on 2 CPU cores.
    pub fn tiny_default() -> Self {
        TrainConfig {
            name: "tiny".into(),
            preset: "tiny".into(),
            output_dir: "runs".into(),
            seed: 0,
            steps: 650,
            batch_size: 128,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 50,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.05,
            shared_weight_decay: 0.2,
            shared_lr_scale: 1.0,
            grad_clip_norm: Some(1.0),
            logit_scale_max: Some(100.0),
            log_every: 50,
            eval_every: 325,
            save_every: 500,
            keep_checkpoints: default_keep_checkpoints(),
            eval_samples: 1000,
            quick_eval_every: 50,
            quick_eval_samples: default_quick_eval_samples(),
            tokenizer: TokenizerSource::TrainedBpe,
            data: ShapesConfig::tiny(),
            train_data: None,
            val_data: None,
            device: Device::Cpu,
            precision: Precision::Fp32,
            cuda_graph: true,
            objectives: Objectives::default(),
            type_embedding: false,
            momentum_targets: None,
            mlm_ratio: default_mlm_ratio(),
            mlm_copies: default_mlm_copies(),
            mim_ratio: default_mim_ratio(),
        }
    }

    /// The embedded default's training settings for any preset, with the shapes world
    /// rendered at the size the preset's images have, the preset's objectives
    /// ([`Objectives::for_model`]: OneR's for a single tower) and, for the B-scale CLIP and
    /// MS-CLIP presets, their own projects' optimiser recipe ([`Recipe`]).
    pub fn for_preset(preset: &str) -> Result<Self> {
        let model = crate::model::preset(preset)?;
        let mut config = TrainConfig::tiny_default();
        config.name = preset.into();
        config.preset = preset.into();
        config.data.image_size = model.vision.image_size;
        config.objectives = Objectives::for_model(&model);
        Recipe::of_preset(preset).apply(&mut config);
        Ok(config)
    }

    /// The preset's settings for `steps` steps of `batch` pairs on `device` in `precision`,
    /// checked: training steps outside a run ([`super::Steps`]), issued op by op unless the
    /// caller turns `cuda_graph` on.
    pub fn for_steps(preset: &str, batch: usize, device: Device, precision: Precision, steps: u64) -> Result<Self> {
        let mut config = TrainConfig::for_preset(preset)?;
        // CLIP's loss for every preset: the one PyTorch's reference steps compute, so the
        // harnesses compare like with like (`--loss` chooses others).
        config.objectives = Objectives::default();
        config.batch_size = batch;
        config.device = device;
        config.precision = precision;
        config.steps = steps;
        config.cuda_graph = false;
        config.validate()?;
        Ok(config)
    }

    /// The model this config trains: its preset, with the type embedding when asked for and
    /// the heads its masked objectives need.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let mut model = crate::model::preset(&self.preset)?;
        model.type_embedding |= self.type_embedding;
        let (mlm, mim) = self.objectives.masked_heads();
        model.mlm_head |= mlm;
        model.mim_head |= mim;
        Ok(model)
    }

    /// Checks every setting, naming the flag that sets it and the range it must lie in.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::config(format!("training: {msg}")));
        validate_run_name(&self.name)?;
        if self.steps == 0 {
            return fail("--steps must be at least 1".into());
        }
        if self.batch_size < 2 {
            return fail(format!(
                "--batch-size must be at least 2 (a contrastive batch needs negatives), got {}",
                self.batch_size
            ));
        }
        if self.steps.checked_mul(self.batch_size as u64).is_none() {
            return fail(format!(
                "--steps {} x --batch-size {} pairs overflows a 64-bit sample count",
                self.steps, self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail(format!("--lr must be a finite number above 0, got {}", self.lr));
        }
        if !(self.min_lr.is_finite() && (0.0..=self.lr).contains(&self.min_lr)) {
            return fail(format!(
                "--min-lr (the cosine schedule's floor) must lie in [0, --lr = {}], got {}",
                self.lr, self.min_lr
            ));
        }
        if !(self.shared_lr_scale.is_finite() && self.shared_lr_scale > 0.0) {
            return fail(format!("shared_lr_scale must be a finite number above 0, got {}", self.shared_lr_scale));
        }
        for (flag, wd, lr) in [
            ("--wd", self.weight_decay, self.lr),
            ("--wd-shared", self.shared_weight_decay, self.lr * self.shared_lr_scale),
        ] {
            // Decoupled weight decay scales the weights by 1 - lr * wd each step.
            if !(wd.is_finite() && wd >= 0.0 && lr * wd < 1.0) {
                return fail(format!(
                    "{flag} must be a finite number >= 0 with learning rate x decay below 1 (lr {lr}), got {wd}"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return fail(format!("AdamW betas must lie in [0, 1), got {} and {}", self.beta1, self.beta2));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return fail(format!("AdamW eps must be a finite number above 0, got {}", self.eps));
        }
        if let Some(clip) = self.grad_clip_norm.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return fail(format!(
                "--grad-clip must be a finite number above 0 (or exactly 0 to turn clipping off), got {clip}"
            ));
        }
        if let Some(max) = self.logit_scale_max.filter(|m| !(m.is_finite() && *m >= 1.0)) {
            return fail(format!(
                "--logit-scale-max must be a finite number >= 1 (or exactly 0 to turn the clamp off), got {max}"
            ));
        }
        if self.log_every == 0 || self.save_every == 0 {
            return fail(format!(
                "--log-every and --save-every must be at least 1 step, got {} and {}",
                self.log_every, self.save_every
            ));
        }
        if self.precision == Precision::Bf16 && !self.device.is_gpu() {
            return fail("bf16 computes on GPU devices only (--device cuda or emu); the CPU reference is fp32".into());
        }
        self.objectives.validate()?;
        for (flag, ratio) in [("--mlm-ratio", self.mlm_ratio), ("--mim-ratio", self.mim_ratio)] {
            if !(ratio > 0.0 && ratio < 1.0) {
                return fail(format!("{flag} must be in (0, 1), got {ratio}"));
            }
        }
        if self.val_data.is_some() && self.train_data.is_none() {
            return fail("--val-data goes with --data DIR: a shapes-world run has its own evaluation".into());
        }
        if self.mlm_copies == 0 {
            return fail("--mlm-copies must be at least 1".into());
        }
        if let Some(decay) = self.momentum_targets {
            if !(0.0..1.0).contains(&decay) {
                return fail(format!("--momentum-targets: the decay must be in [0, 1), got {decay}"));
            }
            if !self.objectives.uses_mixture() {
                return fail(
                    "--momentum-targets makes the mixture targets of xmc, cmc and cic; --loss has none".into(),
                );
            }
            if self.objectives.through_mixture {
                return fail(
                    "--momentum-targets and through-mixture exclude each other: no gradient reaches a momentum copy"
                        .into(),
                );
            }
        }
        self.data.validate()
    }

    /// The learning-rate schedule of the run: warmup to --lr, cosine down to --min-lr.
    pub fn schedule(&self) -> CosineSchedule {
        CosineSchedule { peak: self.lr, floor: self.min_lr, warmup_steps: self.warmup_steps, total_steps: self.steps }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.output_dir.join(&self.name)
    }
}

fn default_keep_checkpoints() -> usize {
    3
}

/// A run name is one plain path component: not empty, not `.` or `..`, no separator and no
/// control character, so `<output>/<name>` always names a directory inside the output folder.
pub fn validate_run_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("would name the output folder or its parent")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(r) => Err(Error::config(format!("--name {name:?} {r}: a run name must be a plain directory name"))),
        None => Ok(()),
    }
}
