//! The step variants `msclip bench step` measures against its default: fusions switched off
//! (`--unfused`) and kernel variants forced (`--kernel`), each applied around the whole run
//! without the model or the training step knowing.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use msclip::backend::gpu::{AttnTiles, with_attention_tiles};
use msclip::model::{ClipModel, ModalityFusion};
use msclip::ops::fusion::{self, Fusion};
use msclip::train::Precision;

/// A fusion `--unfused` switches off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unfused {
    /// The image tower and then the text tower through the shared layers, instead of both at once.
    Modality,
    /// The residual add and the LayerNorm after it as two ops.
    Layernorm,
    /// The MLP's bias add and activation as two ops.
    BiasGelu,
    /// The contrastive loss over stored [n, n] logits: a GEMM and two cross-entropies.
    Infonce,
    /// Attention with the scores stored per head (GEMM, mask, softmax, GEMM), sequences padded
    /// to the longest.
    Attention,
    /// BatchNorm and the ReLU after it as two ops (the conv stem and the parallel branch).
    BatchnormRelu,
    /// A linear layer's bias gradient as a reduction of its own after the weight gradient's GEMM.
    BiasGrad,
}

impl Unfused {
    /// The op-level fusion this switches off; None for the modality fusion, a model setting.
    fn op_fusion(self) -> Option<Fusion> {
        match self {
            Unfused::Modality => None,
            Unfused::Layernorm => Some(Fusion::ResidualLayerNorm),
            Unfused::BiasGelu => Some(Fusion::BiasGelu),
            Unfused::Infonce => Some(Fusion::InfoNce),
            Unfused::Attention => Some(Fusion::Attention),
            Unfused::BatchnormRelu => Some(Fusion::BatchNormRelu),
            Unfused::BiasGrad => Some(Fusion::BiasGrad),
        }
    }
}

impl fmt::Display for Unfused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.to_possible_value().expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// A kernel variant `--kernel` forces: `attention=q32k32` runs every bf16 attention call in
/// that tile shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    Attention(AttnTiles),
}

impl FromStr for KernelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kernel, variant) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: a kernel choice is KERNEL=VARIANT, e.g. attention=q32k32"))?;
        match kernel {
            "attention" => Ok(KernelChoice::Attention(variant.parse()?)),
            other => Err(format!("no kernel family {other:?} has variants to choose; attention does")),
        }
    }
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelChoice::Attention(tiles) => write!(f, "attention={tiles}"),
        }
    }
}

/// What runs differently from the default step.
pub struct Variants<'a> {
    pub unfused: &'a [Unfused],
    pub kernels: &'a [KernelChoice],
}

impl Variants<'_> {
    /// Refuses choices that cannot apply, before any step runs.
    pub fn check(&self, precision: Precision) -> anyhow::Result<()> {
        for choice in self.kernels {
            match choice {
                KernelChoice::Attention(_) if precision != Precision::Bf16 => {
                    anyhow::bail!(
                        "--kernel {choice}: attention tile shapes are the bf16 kernels'; add --precision bf16"
                    )
                }
                KernelChoice::Attention(_) => {}
            }
        }
        Ok(())
    }

    /// The model with the modality fusion off when asked.
    pub fn model(&self, model: ClipModel) -> ClipModel {
        match self.unfused.contains(&Unfused::Modality) {
            true => model.with_fusion(ModalityFusion::TwoPass),
            false => model,
        }
    }

    /// Runs `f` with the op fusions off and the kernel variants forced on this thread.
    pub fn apply<R>(&self, f: impl FnOnce() -> R) -> R {
        let off: Vec<Fusion> = self.unfused.iter().filter_map(|u| u.op_fusion()).collect();
        // Given twice, the last choice wins, as with any repeated flag.
        let tiles = self.kernels.iter().map(|KernelChoice::Attention(tiles)| *tiles).next_back();
        fusion::unfused(&off, || match tiles {
            Some(tiles) => with_attention_tiles(tiles, f),
            None => f(),
        })
    }

    /// One line: what is off and what is forced ("all fusions on" when nothing is).
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>| items.join(", ");
        let mut parts = vec![match self.unfused.is_empty() {
            true => "all fusions on".to_string(),
            false => format!("unfused: {}", list(self.unfused.iter().map(|u| u.to_string()).collect())),
        }];
        if !self.kernels.is_empty() {
            parts.push(format!("kernels: {}", list(self.kernels.iter().map(|k| k.to_string()).collect())));
        }
        parts.join("; ")
    }
}
