//! The training step as one captured graph (CUDA graphs, or the emulator's recording), launched
//! again for every later step on that step's own batch and learning rate.
//!
//! A graph repeats the kernels it captured on the addresses and shapes it captured, so
//! everything that changes from step to step lives in memory the graph reads, written before
//! each launch in the device's stream order:
//! - the images, copied into the captured input tensor;
//! - the captions, packed to a fixed capacity (padding tokens after them, see
//!   [`crate::model::PackCapacity`]) and written into the captured tables: token ids,
//!   positions, sequence offsets, pooled rows and what is derived from them;
//! - the masks of MLM and MIM, when on: the masked copies' ids, the predicted rows and their
//!   targets (padded to a capacity with ignored rows), the masked patches' tables
//!   ([`crate::model::MaskedInputs`]);
//! - the optimizer's learning rate and bias corrections, in its constants table.
//!
//! State the step updates in place (parameters, moments, bf16 copies) keeps its addresses, which
//! is checked after the capture; BatchNorm's running statistics, which the forward replaces, are
//! copied back into their old storage at the end of the graph. A batch whose captions do not fit
//! the capacity gets a new capture around its own size.

use super::config::TrainConfig;
use super::step::{StepInput, StepOutput, StepState, masked_inputs};
use crate::backend::gpu::buffer::overwrite;
use crate::backend::gpu::graph::{self, Graph};
use crate::error::{Error, Result};
use crate::model::{CaptionPacking, ClipModel, MaskedInputs, PackCapacity, TextEncoder, packed_tokens};
use crate::tensor::{Tensor, find_tables};

pub struct GraphStep {
    graph: Graph,
    /// The captured inputs: what each launch reads.
    images: Tensor,
    captions: CaptionPacking,
    /// The masked objectives' tables, when on.
    masked: Option<MaskedInputs>,
    /// Written by each launch.
    output: StepOutput,
}

/// The caption tokens a capture leaves room for beyond its own batch's, either way: about 3%,
/// and at least 64.
fn slack(tokens: usize) -> usize {
    (tokens / 32).max(64)
}

impl GraphStep {
    /// Captures the next step of `state` on `input` and advances the optimizer to it; nothing
    /// runs until [`GraphStep::launch`] or [`GraphStep::launch_captured`].
    pub fn capture(
        state: &mut StepState,
        model: &ClipModel,
        config: &TrainConfig,
        input: StepInput<'_>,
    ) -> Result<GraphStep> {
        let StepInput { images, tokens, lr, .. } = input;
        let device = config.device;
        // A buffer of the graph's own: later launches write their images into it, which must
        // not show through the caller's tensor.
        let images = &images.deep_copy()?;
        let capacity = Self::capacity_for(tokens, model.config.text.context, model.config.text.encoder)?;
        let captions = model.pack_captions(tokens, Some(capacity))?;
        let masked = masked_inputs(model, config, input, Some(capacity))?;
        // Outside the capture, so that the graph reads the tables rather than holding their bytes.
        captions.upload(device)?;
        if let Some(masked) = &masked {
            masked.upload(device)?;
        }
        state.prepare(model, config)?;
        state.optimizer.advance(lr)?;
        let addresses = state.device_addresses();
        let buffers: Vec<Tensor> = state.buffers.values_mut().to_vec();
        let mut capture = || {
            graph::capture(device, || {
                let output = state.compute(model, config, images, &captions, masked.as_ref(), lr)?;
                for (now, before) in state.buffers.values_mut().iter_mut().zip(&buffers) {
                    if !now.shares_storage_with(before) {
                        overwrite(before, now)?;
                        *now = before.clone();
                    }
                }
                Ok(output)
            })
        };
        // A first capture, never launched, finds the tables the step makes from the captions
        // (the fused layers' joint offsets, the gathers' scatter plans): they are uploaded
        // here, outside any graph, so the real capture reads them like the captions' own.
        let (discovery, tables) = find_tables(&mut capture);
        drop(discovery?);
        for table in tables {
            table.device_ptr(device)?;
        }
        let (output, graph) = capture()?;
        if state.device_addresses() != addresses {
            return Err(Error::Device(
                "the captured step moved a parameter, moment or compute copy to new memory, which its \
                 launches would not update: run with --cuda-graph off"
                    .into(),
            ));
        }
        Ok(GraphStep { graph, images: images.clone(), captions, masked, output })
    }

    /// The caption capacity a graph captured on `tokens` (rows of `context` ids) packs to for
    /// `encoder`.
    pub fn capacity_for(tokens: &[u32], context: usize, encoder: TextEncoder) -> Result<PackCapacity> {
        let packed = packed_tokens(tokens, context, encoder)?;
        Ok(PackCapacity::around(packed, slack(packed), context))
    }

    /// Whether a batch of `tokens` fits the captured caption capacity.
    pub fn fits(&self, tokens: &[u32]) -> Result<bool> {
        let capacity = self.captions.capacity.expect("captured packings are padded");
        Ok(capacity.fits(packed_tokens(tokens, self.captions.context, self.captions.encoder)?, self.captions.context))
    }

    /// The captured step as captured: its batch, learning rate and optimizer step.
    pub fn launch_captured(&self) -> Result<StepOutput> {
        self.graph.launch()?;
        self.outputs()
    }

    /// The next step of `state` on a new batch (which must [`GraphStep::fits`]): its inputs
    /// written into the captured ones, the optimizer advanced, the graph launched.
    pub fn launch(&self, state: &mut StepState, model: &ClipModel, input: StepInput<'_>) -> Result<StepOutput> {
        overwrite(&self.images, input.images)?;
        self.captions.rewrite(input.tokens, model.config.text.vocab)?;
        match (&self.masked, input.masks) {
            (Some(masked), Some(draw)) => masked.rewrite(input.tokens, draw, model.mask_geometry())?,
            (None, None) => {}
            _ => return Err(Error::invalid("graph step", "a step with other masks than the captured step's")),
        }
        state.optimizer.advance(input.lr)?;
        self.launch_captured()
    }

    /// Copies of the step's loss, gradient norm and loss terms, which the next launch does not
    /// overwrite.
    fn outputs(&self) -> Result<StepOutput> {
        let terms = self.output.terms.iter().map(|(name, t)| Ok((*name, t.deep_copy()?))).collect::<Result<_>>()?;
        Ok(StepOutput { loss: self.output.loss.deep_copy()?, grad_norm: self.output.grad_norm.deep_copy()?, terms })
    }

    /// Caption and padding tokens per launch.
    pub fn caption_tokens(&self) -> usize {
        self.captions.tokens()
    }
}

/// How a run issues its steps: op by op, or (on a GPU device, when the config asks) the first
/// step op by op and every later one as a launch of a captured graph, captured again when a
/// batch's captions outgrow it.
pub struct StepIssuer {
    graphs: bool,
    graph: Option<GraphStep>,
    steps: u64,
    captures: u64,
}

impl StepIssuer {
    pub fn new(config: &TrainConfig) -> Self {
        StepIssuer { graphs: config.device.is_gpu() && config.cuda_graph, graph: None, steps: 0, captures: 0 }
    }

    /// One training step of `state` on `input`.
    pub fn step(
        &mut self,
        state: &mut StepState,
        model: &ClipModel,
        config: &TrainConfig,
        input: StepInput<'_>,
    ) -> Result<StepOutput> {
        self.steps += 1;
        // The first step runs op by op: it fills the allocator's cache and the GEMM plans and
        // makes the state a capture needs (compute copies, the optimizer's constants).
        if !self.graphs || self.steps == 1 {
            return state.step(model, config, input);
        }
        if let Some(graph) = &self.graph
            && graph.fits(input.tokens)?
        {
            return graph.launch(state, model, input);
        }
        self.graph = None; // its memory goes back before the next capture takes its own
        let graph = GraphStep::capture(state, model, config, input)?;
        self.captures += 1;
        let output = graph.launch_captured();
        self.graph = Some(graph);
        output
    }

    /// Graphs captured so far.
    pub fn captures(&self) -> u64 {
        self.captures
    }
}
