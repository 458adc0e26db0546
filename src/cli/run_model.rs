//! A run's model with trained weights, as `eval` and `export` read it: the run's configs, its
//! tokenizer, and weights from one of its checkpoints or from another project's weights file.

use std::path::{Path, PathBuf};

use clap::Args;

use msclip::model::{Buffers, ClipModel};
use msclip::nn::ParamStore;
use msclip::text::Tokenizer;
use msclip::train::checkpoint::{self, Restored};
use msclip::train::{TrainConfig, load_run_tokenizer, read_run_config};
use msclip::weights;
use msclip::{DType, Rng};

/// Which run and which of its weights a command reads (`eval`, `benchmark`).
#[derive(Args)]
pub struct RunWeightsArgs {
    /// The run directory (holds config.json, the tokenizer and checkpoints/).
    #[arg(long, default_value = "runs/tiny")]
    pub run: PathBuf,
    /// A checkpoint file; defaults to the run's checkpoints/latest.safetensors.
    #[arg(long, conflicts_with = "weights")]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate these weights instead of a checkpoint, a safetensors file in the layout of the
    /// run's model: open_clip's state dict for the CLIP presets (as `msclip export` writes), the
    /// original MS-CLIP code's for the MS-CLIP presets (scripts/convert_msclip_pth.py).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

impl RunWeightsArgs {
    /// The run's model with the chosen weights.
    pub fn load(&self) -> anyhow::Result<RunModel> {
        let source = match &self.weights {
            Some(path) => WeightsSource::File(path.clone()),
            None => WeightsSource::Checkpoint(self.checkpoint.clone()),
        };
        load(&self.run, source)
    }
}

/// Where the weights come from.
pub enum WeightsSource {
    /// A checkpoint of the run: `None` is its checkpoints/latest.safetensors.
    Checkpoint(Option<PathBuf>),
    /// Another project's weights file in the layout of the model's family (`weights::load`).
    File(PathBuf),
}

pub struct RunModel {
    pub train: TrainConfig,
    pub model: ClipModel,
    pub params: ParamStore,
    pub buffers: Buffers,
    pub tokenizer: Tokenizer,
    /// The training step of a checkpoint; a weights file does not say.
    pub step: Option<u64>,
    /// The file the weights came from.
    pub source: PathBuf,
}

pub fn load(run: &Path, weights: WeightsSource) -> anyhow::Result<RunModel> {
    let (train, model_config) = read_run_config(run)?;
    let model = ClipModel::new(model_config)?;
    let tokenizer = load_run_tokenizer(&train, run)?;
    let (mut params, mut buffers) = model.init_params(&mut Rng::new(0), DType::F32)?;
    let (step, source) = match weights {
        WeightsSource::Checkpoint(path) => {
            let path = path.unwrap_or_else(|| run.join("checkpoints").join("latest.safetensors"));
            let Restored { step, .. } = checkpoint::load(&path, &model.config, &mut params, &mut buffers, None, None)?;
            (Some(step), path)
        }
        WeightsSource::File(path) => {
            weights::load(&path, &model, &mut params, &mut buffers)?;
            (None, path)
        }
    };
    Ok(RunModel { train, model, params, buffers, tokenizer, step, source })
}
