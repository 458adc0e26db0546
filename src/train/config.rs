//! Everything a training run is configured by, saved as `runs/<name>/config.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::shapes::ShapesConfig;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device};

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerSource {
    /// A BPE of the model's vocabulary size trained on the shapes-world captions (the
    /// default for the tiny presets).
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
    /// After each step the logit scale is clamped to [0, ln(max)], as open_clip does (100).
    pub logit_scale_max: Option<f64>,
    pub log_every: u64,
    pub eval_every: u64,
    pub save_every: u64,
    /// Images per evaluation split.
    pub eval_samples: usize,
    pub tokenizer: TokenizerSource,
    pub data: ShapesConfig,
    /// Where the model trains: the CPU reference, a GPU, or the GPU backend on the emulator.
    #[serde(default)]
    pub device: Device,
    #[serde(default)]
    pub precision: Precision,
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
            eval_samples: 1000,
            tokenizer: TokenizerSource::TrainedBpe,
            data: ShapesConfig::tiny(),
            device: Device::Cpu,
            precision: Precision::Fp32,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::config(format!("training: {msg}")));
        if self.steps == 0 || self.batch_size < 2 {
            return fail("needs at least one step and a batch of two pairs (a contrastive batch needs negatives)");
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return fail("learning rates must satisfy 0 <= min_lr <= lr, lr > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || self.eps <= 0.0 {
            return fail("AdamW betas must lie in [0, 1) and eps be positive");
        }
        if self.grad_clip_norm.is_some_and(|c| c <= 0.0) || self.logit_scale_max.is_some_and(|m| m < 1.0) {
            return fail("grad_clip_norm must be positive and logit_scale_max at least 1");
        }
        if self.precision == Precision::Bf16 && !self.device.is_gpu() {
            return fail("bf16 computes on GPU devices only (--device cuda or emu); the CPU reference is fp32");
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return fail("the run name must be a plain directory name");
        }
        self.data.validate()
    }

    pub fn run_dir(&self) -> PathBuf {
        self.output_dir.join(&self.name)
    }
}
