//! Named configurations. The B/32 and B/16 presets reproduce the parameter counts of the
//! reference tables exactly (tests assert them); the tiny ones are for CPU training and
//! ablations of the sharing modes.

use super::config::{
    Activation, InitStyle, ModelConfig, ParallelBranch, Sharing, TextConfig, TextEncoder, VisionConfig, VisionStem,
};
use crate::data::PixelStats;
use crate::error::{Error, Result};
use crate::text::{CLIP_VOCAB, Truncation};

/// Every preset name, for help texts and errors.
pub const PRESETS: &[&str] = &[
    "tiny",
    "tiny-clip",
    "tiny-msclip",
    "tiny-msclip-s",
    "tiny-oner",
    "clip-b32",
    "clip-b32-gelu",
    "clip-b16",
    "clip-b16-gelu",
    "msclip-b32",
    "msclip-es-b32",
    "msclip-s-b32",
    "msclip-s-b16",
    "oner-b32",
    "oner-b16",
];

pub fn preset(name: &str) -> Result<ModelConfig> {
    let config = match name {
        "tiny" => tiny(name, Sharing::AttnMlp, true, false),
        "tiny-clip" => tiny(name, Sharing::None, false, false),
        "tiny-msclip" => tiny(name, Sharing::AttnMlp, false, false),
        "tiny-msclip-s" => tiny(name, Sharing::AttnMlp, true, true),
        "tiny-oner" => one_tower(tiny(name, Sharing::All, false, false)),
        "clip-b32" => clip_vit_b(name, 32, Activation::QuickGelu),
        // open_clip's plain ViT-B-32, the architecture of the LAION-trained weights.
        "clip-b32-gelu" => clip_vit_b(name, 32, Activation::Gelu),
        // open_clip's ViT-B-16-quickgelu (OpenAI's ViT-B/16) and plain ViT-B-16.
        "clip-b16" => clip_vit_b(name, 16, Activation::QuickGelu),
        "clip-b16-gelu" => clip_vit_b(name, 16, Activation::Gelu),
        "msclip-b32" => msclip_b32(name, false, None),
        "msclip-es-b32" => msclip_b32(name, true, None),
        "msclip-s-b32" => msclip_b32(name, true, Some(branch_b32())),
        "msclip-s-b16" => msclip_s_b16(),
        "oner-b32" => one_tower(msclip_b32(name, false, None)),
        // OneR's likely backbone (ViT-B/16-like at 224 px: its authors' localisation code reads
        // a 14 x 14 patch grid; oner-notes.md section 4).
        "oner-b16" => {
            let b32 = msclip_b32(name, false, None);
            let vision = VisionConfig { stem: VisionStem::Patchify { patch: 16 }, ..b32.vision.clone() };
            one_tower(ModelConfig { vision, ..b32 })
        }
        _ => return Err(Error::config(format!("unknown preset {name:?}; known presets: {}", PRESETS.join(", ")))),
    };
    config.validate()?;
    Ok(config)
}

/// OneR's single tower (`../shared/reference/oner-notes.md`): every transformer weight and the
/// head shared, the text encoded bidirectionally and read at its [CLS] (SOT) token.
fn one_tower(config: ModelConfig) -> ModelConfig {
    let text = TextConfig { encoder: TextEncoder::Bidirectional, ..config.text };
    ModelConfig { sharing: Sharing::All, text, ..config }
}

/// The CPU default: 48 px images (the shapes world's tiny preset), a 6x6 token grid, width 128, 4 layers, a small BPE
/// vocabulary trained on the shapes-world captions.
fn tiny(name: &str, sharing: Sharing, early_specialisation: bool, parallel: bool) -> ModelConfig {
    let width = 128;
    // Stem channels 32-64-128-128 rather than a straight scaling of B/32's 48-...-768 (which
    // would start at 8): with 16-32-64-128 the default run reached 40% shape zero-shot, with
    // these 57% after the same 750 steps (2026-11-25), for 15% more time per step.
    let stem = if early_specialisation {
        VisionStem::ConvStem { channels: vec![32, 64, 128, 128], strides: vec![2, 2, 1] }
    } else {
        VisionStem::Patchify { patch: 8 }
    };
    ModelConfig {
        name: name.into(),
        embed_dim: 128,
        vision: VisionConfig {
            image_size: 48,
            width,
            layers: 4,
            heads: 4,
            stem,
            parallel_branch: parallel.then(|| ParallelBranch {
                channels: vec![32, 64],
                strides: vec![2, 2],
                lateral_layers: vec![2, 3],
            }),
        },
        text: TextConfig {
            context: 32,
            vocab: 1024,
            width,
            layers: 4,
            heads: 4,
            unshared_first_layer: early_specialisation,
            encoder: TextEncoder::Causal,
            truncation: Truncation::Reference,
        },
        sharing,
        init: InitStyle::MsClip,
        activation: Activation::QuickGelu,
        // CLIP's statistics: the tiny models train from scratch here, on CLIP's pipeline.
        pixel_stats: PixelStats::Clip,
        ln_eps: 1e-12,
        bn_eps: 1e-5,
        bn_eps_branch_blocks: 1e-6,
        // CLIP's ln(1/0.07), not MS-CLIP's 1.0: at exp(1) = 2.7 the logits of a 128-pair batch
        // stay too flat for a few hundred steps to separate same-colour shapes (measured:
        // shape zero-shot at chance after 450 steps, while colour was at 100%).
        logit_scale_init: (1.0f64 / 0.07).ln(),
        type_embedding: false,
        mlm_head: false,
        mim_head: false,
    }
}

/// OpenAI's ViT-B/32 (151,277,313 parameters) and, with 16 px patches, ViT-B/16 (149,620,737);
/// with QuickGELU, or with the exact GELU as open_clip's plain `ViT-B-32` / `ViT-B-16`.
fn clip_vit_b(name: &str, patch: usize, activation: Activation) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        embed_dim: 512,
        vision: VisionConfig {
            image_size: 224,
            width: 768,
            layers: 12,
            heads: 12,
            stem: VisionStem::Patchify { patch },
            parallel_branch: None,
        },
        text: TextConfig {
            context: 77,
            vocab: CLIP_VOCAB,
            width: 512,
            layers: 12,
            heads: 8,
            unshared_first_layer: false,
            encoder: TextEncoder::Causal,
            truncation: Truncation::ForceEot,
        },
        sharing: Sharing::None,
        init: InitStyle::OpenAiClip,
        activation,
        pixel_stats: PixelStats::Clip,
        ln_eps: 1e-5,
        bn_eps: 1e-5,
        bn_eps_branch_blocks: 1e-5,
        logit_scale_init: (1.0f64 / 0.07).ln(),
        type_embedding: false,
        mlm_head: false,
        mim_head: false,
    }
}

/// MS-CLIP at B/32: a 768-wide text tower so weights can be shared; with early
/// specialisation the conv stem replaces visual layer 0 and text layer 0 is unshared.
fn msclip_b32(name: &str, early_specialisation: bool, parallel_branch: Option<ParallelBranch>) -> ModelConfig {
    let stem = if early_specialisation {
        VisionStem::ConvStem { channels: vec![48, 96, 192, 384, 768], strides: vec![2, 2, 2, 2] }
    } else {
        VisionStem::Patchify { patch: 32 }
    };
    ModelConfig {
        name: name.into(),
        embed_dim: 512,
        vision: VisionConfig { image_size: 224, width: 768, layers: 12, heads: 12, stem, parallel_branch },
        text: TextConfig {
            context: 77,
            vocab: CLIP_VOCAB,
            width: 768,
            layers: 12,
            heads: 12,
            unshared_first_layer: early_specialisation,
            encoder: TextEncoder::Causal,
            truncation: Truncation::Reference,
        },
        sharing: Sharing::AttnMlp,
        init: InitStyle::MsClip,
        activation: Activation::QuickGelu,
        // MS-CLIP's released code normalises with ImageNet's statistics (msclip-architecture.md
        // section 5); OneR's presets build on these too (its harness is SLIP's, which does the same).
        pixel_stats: PixelStats::ImageNet,
        ln_eps: 1e-12,
        bn_eps: 1e-5,
        bn_eps_branch_blocks: 1e-6,
        logit_scale_init: 1.0,
        type_embedding: false,
        mlm_head: false,
        mim_head: false,
    }
}

fn branch_b32() -> ParallelBranch {
    ParallelBranch { channels: vec![48, 96, 192, 384, 768], strides: vec![2; 5], lateral_layers: vec![2, 4, 6, 8, 10] }
}

/// MS-CLIP-S at B/16: stem strides [2,2,2,1] (a 14x14 grid) and branch strides [2,2,2,2,1].
fn msclip_s_b16() -> ModelConfig {
    let mut config = msclip_b32("msclip-s-b16", true, Some(branch_b32()));
    config.vision.stem = VisionStem::ConvStem { channels: vec![48, 96, 192, 384, 768], strides: vec![2, 2, 2, 1] };
    if let Some(branch) = &mut config.vision.parallel_branch {
        branch.strides = vec![2, 2, 2, 2, 1];
    }
    config
}
