//! The training steps both profile commands count: the settings they share (preset, batch,
//! device, precision, depth, objectives), a warm-up step, then the counted steps with every driver call
//! recorded and, on the emulator, every kernel launch profiled.

use clap::Args;
use msclip::Device;
use msclip::backend::gpu;
use msclip::backend::gpu::counters::{DriverCounters, measure};
use msclip::backend::gpu::emu::{self, Instrumentation, LaunchProfile, Schedule};
use msclip::model::{ClipModel, Objectives, preset};
use msclip::train::{Precision, Steps, TrainConfig, memory, new_run_tokenizer};

use crate::cli::train::parse_objectives;

/// Steps run before counting: the first step's calls include one-time work.
pub const WARMUP_STEPS: u64 = 1;

#[derive(Args)]
pub struct StepsArgs {
    /// Model preset.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Image-text pairs per step; at least 2.
    #[arg(long)]
    pub batch: usize,
    /// Layers of each tower instead of the preset's (say 1, to profile one layer of a large
    /// preset on the emulator); a conv stem counts as visual layer 0, as in the presets, and a
    /// parallel branch keeps its stages, fused in at the same relative depths.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Compute precision of the towers: fp32 or bf16.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// Training objectives and weights, as `msclip train --loss` takes them [default: itc=1 for
    /// every preset, the loss PyTorch's reference steps compute].
    #[arg(long, value_parser = parse_objectives)]
    pub loss: Option<Objectives>,
}

/// What the counted steps asked of the driver, and the profiles of their kernel launches
/// (empty unless they ran on the emulator's profiler).
pub struct CountedSteps {
    pub counters: DriverCounters,
    pub profiles: Vec<LaunchProfile>,
}

impl StepsArgs {
    /// The model, with `--layers` applied, and the preset's training settings at `--batch` on
    /// `device`, after checking the flags.
    pub fn prepare(&self, device: Device, steps: u64) -> anyhow::Result<(ClipModel, TrainConfig)> {
        if self.batch < 2 {
            anyhow::bail!("--batch must be at least 2 (a contrastive batch needs negatives), got {}", self.batch);
        }
        let mut config =
            TrainConfig::for_steps(&self.preset, self.batch, device, self.precision, WARMUP_STEPS + steps)?;
        if let Some(objectives) = &self.loss {
            objectives.check_model(&preset(&self.preset)?)?;
            config.objectives = objectives.clone();
        }
        // The preset with the heads the objectives need (MLM, MIM).
        let mut model_config = config.model_config()?;
        if let Some(layers) = self.layers {
            model_config = model_config
                .with_depth(layers)
                .map_err(|e| anyhow::anyhow!("--layers {layers} does not fit preset {}: {e}", self.preset))?;
        }
        let model = ClipModel::new(model_config)?;
        if device.is_gpu() {
            // Fails now, with what is missing, when the device cannot run.
            gpu::driver(device)?;
        }
        memory::check_batch(&model, device, "--batch", self.batch as u64)?;
        Ok((model, config))
    }
}

/// Runs the warm-up step, then `steps` more, counting the driver calls of the latter; on the
/// emulator their launches run on the profiler (single-threaded, so slower).
pub fn count_steps(model: &ClipModel, config: &TrainConfig, steps: u64) -> msclip::Result<CountedSteps> {
    let tokenizer = new_run_tokenizer(config, model)?;
    let mut runner = Steps::new(model, config, &tokenizer)?;
    let mut train_step = |step: u64| runner.run(step).map(drop);
    (0..WARMUP_STEPS).try_for_each(&mut train_step)?;
    let mut counted = || measure(|| (WARMUP_STEPS..WARMUP_STEPS + steps).try_for_each(&mut train_step));
    let (result, counters) = match config.device {
        Device::Emu => {
            emu::take_profiles();
            emu::instrument(Instrumentation::Profiler, Schedule::Forward, counted)
        }
        _ => counted(),
    };
    result?;
    Ok(CountedSteps { counters, profiles: emu::take_profiles() })
}
