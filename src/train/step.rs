//! One training step: forward, backward, gradient clipping, AdamW and the logit-scale clamp,
//! on whatever device the state lives on. The training loop runs it; [`Steps`] runs it without
//! a loop, for `msclip profile step` (what a step asks of a GPU driver) and `msclip kernels
//! --check` (a step's kernels under the emulator's sanitizer).

use super::batch::training_batch;
use super::config::TrainConfig;
use super::param_groups;
use super::schedule::CosineSchedule;
use crate::autograd::{self, Gradients};
use crate::error::{Error, Result};
use crate::model::{Buffers, ClipModel};
use crate::nn::{AdamW, AdamWConfig, ParamStore};
use crate::tensor::{DType, Device, Rng, Tensor};
use crate::text::Tokenizer;

/// The dtype of master weights, optimizer moments and the loss, whatever the compute precision.
pub const MASTER_DTYPE: DType = DType::F32;

/// What training steps update: the parameters, the BatchNorm statistics and the AdamW moments.
pub struct StepState {
    pub params: ParamStore,
    pub buffers: Buffers,
    pub optimizer: AdamW,
}

impl StepState {
    /// Fresh parameters drawn from `rng` on the CPU (so every device starts from the same
    /// values) and an AdamW with the config's hyperparameters and parameter groups.
    pub fn init(model: &ClipModel, config: &TrainConfig, rng: &mut Rng) -> Result<Self> {
        let (params, buffers) = model.init_params(rng, MASTER_DTYPE)?;
        let groups = param_groups::groups(config.weight_decay, config.shared_weight_decay, config.shared_lr_scale);
        let adam = AdamWConfig { beta1: config.beta1, beta2: config.beta2, eps: config.eps };
        let optimizer = AdamW::new(&params, adam, groups, |name, _| param_groups::assign(&model.spec, name))?;
        Ok(StepState { params, buffers, optimizer })
    }

    /// Puts parameters, BatchNorm statistics and AdamW moments on `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.params.to_device(device)?;
        self.buffers.to_device(device)?;
        self.optimizer.to_device(device)
    }

    /// One step on a batch (`images` already on the state's device, in the compute precision)
    /// at learning rate `lr`; returns the batch's loss. A loss that is not finite comes back
    /// before backward, with the tape cleared and nothing updated: the caller decides what to
    /// do about it.
    pub fn step(
        &mut self,
        model: &ClipModel,
        config: &TrainConfig,
        images: &Tensor,
        tokens: &[u32],
        lr: f64,
    ) -> Result<f64> {
        let compute_dtype = config.precision.dtype();
        let compute_params = (compute_dtype != MASTER_DTYPE)
            .then(|| self.params.cast_for_compute(compute_dtype, |id| id == model.logit_scale()))
            .transpose()?;
        let loss = model.contrastive_loss(
            compute_params.as_ref().unwrap_or(&self.params),
            &mut self.buffers,
            images,
            tokens,
            None,
        )?;
        let loss_value = loss.item()?;
        if !loss_value.is_finite() {
            autograd::clear_tape();
            return Ok(loss_value);
        }
        let grads = autograd::backward(&loss)?;
        let grad_scale = clip_scale(&self.params, &grads, config.grad_clip_norm)?;
        self.optimizer.step(&mut self.params, &grads, lr, grad_scale)?;
        if let Some(max) = config.logit_scale_max {
            clamp_logit_scale(&mut self.params, model, max.ln())?;
        }
        Ok(loss_value)
    }
}

/// Training steps without a run around them (no logs, evaluations or checkpoints): the state a
/// run of the config starts from, on the config's device, and step k on the batch such a run
/// trains step k on.
pub struct Steps<'a> {
    model: &'a ClipModel,
    config: &'a TrainConfig,
    tokenizer: &'a Tokenizer,
    schedule: CosineSchedule,
    pub state: StepState,
}

impl<'a> Steps<'a> {
    /// Fresh state drawn from the config's seed, put on the config's device.
    pub fn new(model: &'a ClipModel, config: &'a TrainConfig, tokenizer: &'a Tokenizer) -> Result<Self> {
        let mut state = StepState::init(model, config, &mut Rng::new(config.seed))?;
        state.to_device(config.device)?;
        Ok(Steps { model, config, tokenizer, schedule: config.schedule(), state })
    }

    /// Runs 0-based step `step` on its batch and returns the loss; a loss that is not finite is
    /// an error.
    pub fn run(&mut self, step: u64) -> Result<f64> {
        let (model, config) = (self.model, self.config);
        let batch = training_batch(config, self.tokenizer, model.config.text.context, step)?;
        let images = batch.images_on(config.device, config.precision.dtype())?;
        let loss = self.state.step(model, config, &images, &batch.tokens, self.schedule.lr(step))?;
        if !loss.is_finite() {
            return Err(Error::invalid("training step", format!("loss is {loss} at step {}", step + 1)));
        }
        Ok(loss)
    }
}

/// The factor that scales gradients down to `max_norm` global L2 norm (1 when below).
fn clip_scale(params: &ParamStore, grads: &Gradients, max_norm: Option<f64>) -> Result<f64> {
    let Some(max_norm) = max_norm else { return Ok(1.0) };
    let mut squares = 0.0;
    for g in params.ids().filter_map(|id| grads.get(params.get(id))) {
        squares += squared_norm(g)?;
    }
    let norm = squares.sqrt();
    Ok(if norm > max_norm { max_norm / norm } else { 1.0 })
}

/// Sum of squares of a gradient: in f64 on the host for CPU tensors; on a GPU reduced where it
/// lives, so only one number per tensor crosses to the host instead of the whole gradient.
fn squared_norm(g: &Tensor) -> Result<f64> {
    if g.device() == Device::Cpu {
        return Ok(g.to_f64_vec().iter().map(|v| v * v).sum());
    }
    autograd::no_grad(|| g.mul(g)?.sum_all()?.item())
}

/// open_clip clamps the logit scale parameter to [0, ln 100] after every step.
fn clamp_logit_scale(params: &mut ParamStore, model: &ClipModel, max_log: f64) -> Result<()> {
    let id = model.logit_scale();
    let value = params.get(id).item()?;
    let clamped = value.clamp(0.0, max_log);
    if clamped != value {
        let device = params.get(id).device();
        params.set(id, Tensor::from_f64(&[clamped], [1], params.get(id).dtype())?.to_device(device)?)?;
    }
    Ok(())
}
