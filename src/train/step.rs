//! One training step: forward, backward, gradient clipping, AdamW and the logit-scale clamp,
//! on whatever device the state lives on. The training loop runs it; [`Steps`] runs it without
//! a loop, for `msclip bench step`, `msclip profile step` (what a step asks of a GPU driver)
//! and `msclip kernels --check` (a step's kernels under the emulator's sanitizer).

use std::sync::Arc;

use super::batch::{Batch, SyntheticCaptions, synthetic_batch};
use super::config::TrainConfig;
use super::data::TrainingData;
use super::data_parallel;
use super::graph_step::StepIssuer;
use super::masking::Masker;
use super::momentum::Momentum;
use super::param_groups;
use super::schedule::CosineSchedule;
use crate::autograd;
use crate::backend::gpu::check_attention_head_dim;
use crate::dist::{Collective, Negatives};
use crate::error::{Error, Result};
use crate::model::{
    Buffers, CaptionPacking, ClipModel, LossContext, LossTerms, MaskCapacity, MaskDraw, MaskedInputs, PackCapacity,
};
use crate::nn::{AdamW, AdamWConfig, ComputeCopies, ParamId, ParamStore, Update};
use crate::nvtx;
use crate::tensor::{DType, Device, Rng, Storage, Tensor};
use crate::text::Tokenizer;

/// The dtype of master weights, optimizer moments and the loss, whatever the compute precision.
pub const MASTER_DTYPE: DType = DType::F32;

/// What training steps update: the parameters, the BatchNorm statistics and the AdamW moments,
/// and in mixed precision the parameters' bf16 compute copies.
pub struct StepState {
    pub params: ParamStore,
    pub buffers: Buffers,
    pub optimizer: AdamW,
    /// Cast from the masters at the first mixed-precision step and rewritten by every AdamW
    /// step after it; None until then, and again whenever the masters move.
    compute: Option<ComputeCopies>,
    /// The momentum copy that computes the mixture targets (`--momentum-targets`), updated
    /// after every optimizer step.
    pub momentum: Option<Momentum>,
    /// The other ranks of a data-parallel world ([`StepState::across_ranks`]); None alone.
    ranks: Option<Arc<dyn Collective>>,
}

/// What one step trains on.
#[derive(Clone, Copy)]
pub struct StepInput<'a> {
    /// [batch, 3, size, size], already on the state's device, in the compute precision.
    pub images: &'a Tensor,
    /// Row-major [batch, context] token ids.
    pub tokens: &'a [u32],
    pub lr: f64,
    /// The step's masks, when a masked objective is on ([`super::Masker`]).
    pub masks: Option<&'a MaskDraw>,
}

/// What a step leaves on the state's device, unread: reading either waits for the step.
pub struct StepOutput {
    /// The batch's loss, [1].
    pub loss: Tensor,
    /// The global L2 norm of the gradients before clipping, [1]. Not finite: the update was
    /// skipped (and the loss is not finite either, or a gradient overflowed).
    pub grad_norm: Tensor,
    /// With several objectives, each one's unweighted value, [1] ([`crate::model::LossTerms`]).
    pub terms: Vec<(&'static str, Tensor)>,
}

impl StepState {
    /// Fresh parameters drawn from `rng` on the CPU (so every device starts from the same
    /// values) and an AdamW with the config's hyperparameters and parameter groups.
    pub fn init(model: &ClipModel, config: &TrainConfig, rng: &mut Rng) -> Result<Self> {
        check_kernels_exist(model, config)?;
        config.objectives.check_model(&model.config)?;
        let (params, buffers) = model.init_params(rng, MASTER_DTYPE)?;
        let groups = param_groups::groups(config.weight_decay, config.shared_weight_decay, config.shared_lr_scale);
        let adam = AdamWConfig { beta1: config.beta1, beta2: config.beta2, eps: config.eps };
        let optimizer = AdamW::new(&params, adam, groups, |name, _| param_groups::assign(&model.spec, name))?;
        let momentum = config.momentum_targets.map(|decay| Momentum::new(&params, &buffers, decay)).transpose()?;
        Ok(StepState { params, buffers, optimizer, compute: None, momentum, ranks: None })
    }

    /// Makes this state one rank of a data-parallel world: each step's batch is the rank's
    /// share of the global batch, every contrast spans all ranks' pairs, the masked objectives
    /// average the ranks' means, the gradients are summed across ranks, and the loss (and each
    /// objective's value) a step returns is the global batch's. Every rank must start from the
    /// same parameters (the same seed).
    pub fn across_ranks(mut self, ranks: Arc<dyn Collective>) -> Self {
        self.ranks = Some(ranks);
        self
    }

    /// Puts parameters, BatchNorm statistics and AdamW moments on `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.compute = None;
        self.params.to_device(device)?;
        self.buffers.to_device(device)?;
        if let Some(momentum) = &mut self.momentum {
            momentum.to_device(device)?;
        }
        self.optimizer.to_device(device)
    }

    /// One step on a batch at its learning rate: forward, backward, then clipping, AdamW and
    /// the logit-scale clamp in one optimizer call that the host never waits for. A batch whose
    /// loss or gradients are not finite updates nothing; the caller sees it in the outputs when
    /// it reads them.
    pub fn step(&mut self, model: &ClipModel, config: &TrainConfig, input: StepInput<'_>) -> Result<StepOutput> {
        self.step_padded(model, config, input, None)
    }

    /// [`StepState::step`] with the captions padded to `capacity` when given, as a captured
    /// graph packs them: the step a graph launch runs, op by op.
    pub fn step_padded(
        &mut self,
        model: &ClipModel,
        config: &TrainConfig,
        input: StepInput<'_>,
        capacity: Option<PackCapacity>,
    ) -> Result<StepOutput> {
        let captions = model.pack_captions(input.tokens, capacity)?;
        let masked = masked_inputs(model, config, input, capacity)?;
        self.prepare(model, config)?;
        self.optimizer.advance(input.lr)?;
        self.compute(model, config, input.images, &captions, masked.as_ref(), input.lr)
    }

    /// The device addresses of what a step updates in place (parameters, moments, compute
    /// copies), in a fixed order; empty on the CPU.
    pub(super) fn device_addresses(&self) -> Vec<u64> {
        let copies = self.compute.iter().flat_map(|c| (0..c.len()).filter_map(|i| c.get(ParamId::from_index(i))));
        let moments = self.params.ids().flat_map(|id| {
            let (m, v) = self.optimizer.moments(id);
            [m, v]
        });
        let params = self.params.ids().map(|id| self.params.get(id));
        let momentum = self.momentum.iter().flat_map(|m| m.params.ids().map(|id| m.params.get(id)));
        params
            .chain(momentum)
            .chain(moments)
            .chain(copies)
            .filter_map(|t| match t.storage() {
                Storage::Gpu(g) => Some(g.ptr()),
                Storage::Cpu(_) => None,
            })
            .collect()
    }

    /// Makes the compute copies, when the precision has them and they are not made yet.
    pub(super) fn prepare(&mut self, model: &ClipModel, config: &TrainConfig) -> Result<()> {
        let compute_dtype = config.precision.dtype();
        if compute_dtype != MASTER_DTYPE && self.compute.is_none() {
            let keep = |id| id == model.logit_scale();
            self.compute = Some(ComputeCopies::new(&self.params, compute_dtype, keep)?);
        }
        Ok(())
    }

    /// Forward, backward and the update of the step the optimizer has advanced to, at `lr`:
    /// all device work, nothing read back, so a graph can capture it.
    pub(super) fn compute(
        &mut self,
        model: &ClipModel,
        config: &TrainConfig,
        images: &Tensor,
        captions: &CaptionPacking,
        masked: Option<&MaskedInputs>,
        lr: f64,
    ) -> Result<StepOutput> {
        let LossTerms { total: loss, terms } = {
            let _forward = nvtx::range("forward");
            // Dropped before the update, which then writes the copies in place.
            let copies = self.compute.as_ref().map(|c| c.forward_store(&self.params));
            let params = copies.as_ref().unwrap_or(&self.params);
            let momentum = self.momentum.as_mut().map(|m| (&m.params, &mut m.buffers));
            let negatives = self.ranks.clone().map_or(Negatives::Local, Negatives::AcrossRanks);
            let context = LossContext { max_scale: None, momentum, masked, negatives };
            model.training_loss_terms(params, &mut self.buffers, images, captions, &config.objectives, context)?
        };
        let (grads, loss, terms) = {
            let _backward = nvtx::range("backward");
            match &self.ranks {
                Some(ranks) => {
                    let (params, copies, bucket) = (&self.params, self.compute.as_ref(), data_parallel::BUCKET_BYTES);
                    let grads = data_parallel::backward_summed(&loss, params, copies, ranks.as_ref(), bucket)?;
                    let (loss, terms) = data_parallel::sum_losses(&loss.detach(), terms, ranks.as_ref())?;
                    (grads, loss, terms)
                }
                None => (autograd::backward(&loss)?, loss.detach(), terms),
            }
        };
        // Gradient clipping happens inside the optimizer's backend call (adamw_multi), which marks
        // it with a `clip` range.
        let _optimizer = nvtx::range("optimizer");
        // open_clip clamps the logit scale parameter to [0, ln max] after every step.
        let clamps: Vec<_> =
            config.logit_scale_max.map(|max| (model.logit_scale(), (0.0, max.ln()))).into_iter().collect();
        let update = Update { lr, max_grad_norm: config.grad_clip_norm, clamps: &clamps };
        let grad_norm = self.optimizer.apply(&mut self.params, self.compute.as_mut(), &grads, update)?;
        if let Some(momentum) = &mut self.momentum {
            momentum.update(&self.params)?;
        }
        Ok(StepOutput { loss, grad_norm, terms })
    }
}

/// The NVTX range of 0-based step `step`, named as the logs number it: `step 1` is the first.
/// It spans what the step issues, not its batch's making.
pub(super) fn step_range(step: u64) -> nvtx::Range {
    nvtx::range(format_args!("step {}", step + 1))
}

/// The tables of a step's masks, padded to fit any batch whose captions fit `capacity` when
/// given; None without masks.
pub(super) fn masked_inputs(
    model: &ClipModel,
    config: &TrainConfig,
    input: StepInput<'_>,
    capacity: Option<PackCapacity>,
) -> Result<Option<MaskedInputs>> {
    let Some(draw) = input.masks else { return Ok(None) };
    let batch = input.images.dims()[0];
    let capacity = capacity.map(|c| MaskCapacity::around(c, batch, config.mlm_copies, config.mlm_ratio));
    MaskedInputs::new(input.tokens, draw, model.mask_geometry(), capacity).map(Some)
}

/// Training steps without a run around them (no logs, evaluations or checkpoints): the state a
/// run of the config starts from, on the config's device, and step k on the batch such a run
/// trains step k on.
pub struct Steps<'a> {
    model: &'a ClipModel,
    config: &'a TrainConfig,
    tokenizer: &'a Tokenizer,
    schedule: CosineSchedule,
    data: TrainingData,
    /// One batch fed to every step instead of the training data's (`--data synthetic`).
    synthetic: Option<Batch>,
    /// Draws each step's masks when a masked objective is on.
    masker: Option<Masker>,
    issuer: StepIssuer,
    pub state: StepState,
}

/// Refuses, before the first step, a model the device's kernels cannot run (a head dim with no
/// attention kernel), with the reason, rather than failing inside the first forward.
fn check_kernels_exist(model: &ClipModel, config: &TrainConfig) -> Result<()> {
    if !config.device.is_gpu() {
        return Ok(());
    }
    let (vision, text) = (&model.config.vision, &model.config.text);
    for (tower, width, heads) in [("vision", vision.width, vision.heads), ("text", text.width, text.heads)] {
        check_attention_head_dim(config.precision.dtype(), width / heads, heads).map_err(|e| {
            Error::config(format!("{}: the {tower} tower cannot run on {}: {e}", model.config.name, config.device))
        })?;
    }
    Ok(())
}

impl<'a> Steps<'a> {
    /// Fresh state drawn from the config's seed, put on the config's device.
    pub fn new(model: &'a ClipModel, config: &'a TrainConfig, tokenizer: &'a Tokenizer) -> Result<Self> {
        let mut state = StepState::init(model, config, &mut Rng::new(config.seed))?;
        state.to_device(config.device)?;
        let issuer = StepIssuer::new(config);
        let masker = Masker::new(config, &model.config, tokenizer)?;
        let schedule = config.schedule();
        let data = TrainingData::open(config, &model.config)?;
        Ok(Steps { model, config, tokenizer, schedule, data, synthetic: None, masker, issuer, state })
    }

    /// Feeds every step one batch of random data in the shapes of a real one
    /// ([`synthetic_batch`]), made now, so a throughput measurement times the step and not the
    /// host's rendering. The batch is still uploaded every step.
    pub fn with_synthetic_data(mut self, captions: SyntheticCaptions) -> Result<Self> {
        let context = self.model.config.text.context;
        self.synthetic = Some(synthetic_batch(self.config, self.tokenizer, context, captions, self.config.seed)?);
        Ok(self)
    }

    /// Runs 0-based step `step` on its batch, op by op, and returns what it left on the device,
    /// unread.
    pub fn run(&mut self, step: u64) -> Result<StepOutput> {
        let (tokens, images) = self.batch(step)?;
        let masks = self.masker.as_ref().map(|m| m.draw(&tokens, images.dims()[0], step));
        let input = StepInput { images: &images, tokens: &tokens, lr: self.schedule.lr(step), masks: masks.as_ref() };
        let _range = step_range(step);
        self.state.step(self.model, self.config, input)
    }

    /// Runs step `step` as a training run issues it ([`StepIssuer`]): with the config's
    /// `cuda_graph` on a GPU device, the first step these steps issue runs op by op and every
    /// later one is a launch of a captured graph of the whole step, on its own batch.
    pub fn run_issued(&mut self, step: u64) -> Result<StepOutput> {
        let (tokens, images) = self.batch(step)?;
        let masks = self.masker.as_ref().map(|m| m.draw(&tokens, images.dims()[0], step));
        let input = StepInput { images: &images, tokens: &tokens, lr: self.schedule.lr(step), masks: masks.as_ref() };
        let _range = step_range(step);
        self.issuer.step(&mut self.state, self.model, self.config, input)
    }

    /// Graphs [`Steps::run_issued`] has captured.
    pub fn captures(&self) -> u64 {
        self.issuer.captures()
    }

    /// Step `step`'s token rows, and its images on the device in the compute precision.
    fn batch(&self, step: u64) -> Result<(Vec<u32>, Tensor)> {
        let made;
        let batch = match &self.synthetic {
            Some(batch) => batch,
            None => {
                made = self.data.batch(step, self.tokenizer, &self.model.config)?;
                &made
            }
        };
        Ok((batch.tokens.clone(), batch.images_on(self.config.device, self.config.precision.dtype())?))
    }
}
