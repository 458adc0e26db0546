//! msclip: modality-shared contrastive image-text transformers (CLIP, MS-CLIP, single-tower
//! models) on a small tape autograd, a CPU reference backend and, later, CUDA kernels.
//!
//! Layers, bottom up (see DESIGN.md section 2):
//! - [`tensor`]: the value type (shape, dtype, device, storage) and seeded init.
//! - [`backend`]: the op set every device implements, forward and backward; [`backend::cpu`]
//!   is the reference.
//! - [`autograd`]: the tape, `backward`, `no_grad`.
//! - [`ops`]: differentiable ops on tensors, checked and recorded; what models call.
//! - [`nn`]: parameters with names, and optimizers.
//! - [`text`]: captions to token ids (CLIP's BPE, or one trained on the corpus).
//! - [`data`]: training and evaluation data; [`data::shapes`] is the procedural shapes world.
//! - [`dist`]: data parallelism: the collective ranks talk through, the loss across ranks.
//! - [`weights`]: model weights in other projects' layouts (open_clip's state dict), checked
//!   against the model before use.
//! - [`kernel_check`]: every GPU kernel under the emulator's sanitizer, from training steps
//!   and op calls (`msclip kernels --check`).
//! - [`nvtx`]: named ranges (steps, their phases, backend ops) for Nsight Systems.

pub mod allocator;
pub mod autograd;
pub mod backend;
pub mod charts;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod files;
pub mod kernel_check;
pub mod model;
pub mod nn;
pub mod nvtx;
pub mod ops;
pub mod tensor;
pub mod text;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use tensor::{DType, Device, Rng, Shape, Table, Tensor};
