//! The suite's training steps: the first step of a run of the tiny presets on the emulator at a
//! small odd batch.

use std::sync::OnceLock;

use super::{Case, Outputs, output};
use crate::error::Result;
use crate::model::{ClipModel, preset};
use crate::tensor::Device;
use crate::text::Tokenizer;
use crate::train::checkpoint::named_tensors;
use crate::train::{Precision, Steps, TrainConfig, new_run_tokenizer};

/// Pairs per step: odd, so the loss and the batch-wide kernels see partial tiles.
const BATCH: usize = 3;

/// `tiny` (the default run: convolution stem with BatchNorm) and `tiny-msclip-s` (the same
/// towers plus the parallel branch's depthwise convolutions) in both precisions; `tiny-clip`
/// (two unshared towers, patchify stem, the exact f32 attention at its lengths) in fp32 and
/// `tiny-oner` (one tower for both modalities) in bf16.
const STEPS: [(&str, Precision); 6] = [
    ("tiny", Precision::Fp32),
    ("tiny", Precision::Bf16),
    ("tiny-msclip-s", Precision::Fp32),
    ("tiny-msclip-s", Precision::Bf16),
    ("tiny-clip", Precision::Fp32),
    ("tiny-oner", Precision::Bf16),
];

pub(super) fn cases() -> Vec<Case> {
    STEPS
        .into_iter()
        .map(|(preset, precision)| {
            let tokenizer = OnceLock::new();
            Case::new(format!("step {preset} {precision}"), move || step(preset, precision, &tokenizer))
        })
        .collect()
}

/// The first training step of `preset` on the emulator: its loss, and every tensor a checkpoint
/// after it would hold (parameters, AdamW moments, BatchNorm statistics). The case's first run
/// trains the run's tokenizer (half a second, no kernels) into `tokenizer`; the others reuse it.
fn step(preset_name: &str, precision: Precision, tokenizer: &OnceLock<Tokenizer>) -> Result<Outputs> {
    let config = TrainConfig::for_steps(preset_name, BATCH, Device::Emu, precision, 1)?;
    let model = ClipModel::new(preset(preset_name)?)?;
    if tokenizer.get().is_none() {
        let _ = tokenizer.set(new_run_tokenizer(&config, &model)?);
    }
    let tokenizer = tokenizer.get().expect("trained above");
    let mut steps = Steps::new(&model, &config, tokenizer)?;
    let step = steps.run(0)?;
    let mut outputs = vec![output("loss", &step.loss)?, output("grad_norm", &step.grad_norm)?];
    let state = &steps.state;
    for (name, tensor) in named_tensors(&state.params, &state.optimizer, &state.buffers, state.momentum.as_ref()) {
        outputs.push(output(name, tensor)?);
    }
    Ok(outputs)
}
