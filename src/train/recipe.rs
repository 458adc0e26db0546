//! The optimisation settings each B-scale preset's own project trained with, as far as they are
//! known, so a run of `--preset clip-b32` or `msclip-s-b32` starts from the recipe its weights
//! came from rather than from the tiny default's (which is tuned for the shapes world on a
//! CPU). Flags still override every field. The tiny presets keep the default run's recipe.
//!
//! Sources: MS-CLIP's configs (`experiments/model/*-msclips.yaml` over `b32.yaml` in
//! Hxyou/MSCLIP, summarised in shared/reference/msclip-architecture.md section 4b) and
//! open_clip's training defaults (`open_clip_train/params.py`: `get_default_params` for ViT
//! models, `--wd`, `--grad-clip-norm`, and the model's clamp of the logit scale at ln 100).

use super::config::TrainConfig;

/// Which published recipe a preset follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// The embedded default (the tiny presets, OneR's: whose recipe is not published).
    Default,
    /// open_clip's defaults for a ViT CLIP.
    OpenClip,
    /// MS-CLIP's B/32 configs (`b32-yfcc-msclips.yaml` and the B/32 ablation configs).
    MsClipB32,
    /// MS-CLIP-S B/16 (`b16-yfcc-msclips.yaml`): as B/32 but LR_SHARE 1.6e-3 against LR 1e-4.
    MsClipB16,
}

impl Recipe {
    pub fn of_preset(preset: &str) -> Recipe {
        match preset {
            "clip-b32" | "clip-b32-gelu" | "clip-b16" | "clip-b16-gelu" => Recipe::OpenClip,
            "msclip-b32" | "msclip-es-b32" | "msclip-s-b32" => Recipe::MsClipB32,
            "msclip-s-b16" => Recipe::MsClipB16,
            _ => Recipe::Default,
        }
    }

    /// Sets the recipe's optimiser, clipping and logit-scale fields of `config`; the schedule's
    /// length, warmup and the data stay as they are (both projects count them in epochs of
    /// datasets we do not have).
    pub fn apply(self, config: &mut TrainConfig) {
        match self {
            Recipe::Default => {}
            Recipe::OpenClip => {
                // get_default_params for ViT models: lr 5e-4, betas 0.9/0.98, eps 1e-6; --wd
                // 0.2; no gradient clipping unless --grad-clip-norm is given; the logit scale
                // clamped to ln(100) after every step; the floor of its cosine is 0.
                config.lr = 5e-4;
                config.min_lr = 0.0;
                config.beta1 = 0.9;
                config.beta2 = 0.98;
                config.eps = 1e-6;
                config.weight_decay = 0.2;
                config.shared_weight_decay = 0.2; // no weight is shared in a CLIP preset
                config.shared_lr_scale = 1.0;
                config.grad_clip_norm = None;
                config.logit_scale_max = Some(100.0);
            }
            Recipe::MsClipB32 | Recipe::MsClipB16 => {
                // TRAIN.LR 1e-4 per GPU (SCALE_LR multiplies LR and LR_SHARE by the world
                // size: one process here), the timm cosine's min_lr 1e-5, TRAIN.WD 0.05 and
                // WD_SHARE 0.2, CLIP_GRAD_NORM 0 (no clipping), and no clamp of the logit scale
                // anywhere in the repository. Its AdamW betas and eps are not in the configs:
                // ours (CLIP's 0.9/0.98/1e-6) stay.
                config.lr = 1e-4;
                config.min_lr = 1e-5;
                config.weight_decay = 0.05;
                config.shared_weight_decay = 0.2;
                config.shared_lr_scale = if self == Recipe::MsClipB16 { 16.0 } else { 1.0 };
                config.grad_clip_norm = None;
                config.logit_scale_max = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_b_scale_preset_starts_from_its_own_projects_recipe() {
        let clip = TrainConfig::for_preset("clip-b32").unwrap();
        assert_eq!(
            (clip.lr, clip.weight_decay, clip.grad_clip_norm, clip.logit_scale_max),
            (5e-4, 0.2, None, Some(100.0))
        );
        let msclip = TrainConfig::for_preset("msclip-s-b32").unwrap();
        assert_eq!((msclip.lr, msclip.weight_decay, msclip.shared_weight_decay), (1e-4, 0.05, 0.2));
        assert_eq!((msclip.grad_clip_norm, msclip.logit_scale_max, msclip.shared_lr_scale), (None, None, 1.0));
        let b16 = TrainConfig::for_preset("msclip-s-b16").unwrap();
        assert!((b16.lr * b16.shared_lr_scale - 1.6e-3).abs() < 1e-12);
        // The tiny presets keep the default run's recipe.
        let tiny = TrainConfig::for_preset("tiny-msclip-s").unwrap();
        let default = TrainConfig::tiny_default();
        assert_eq!(
            (tiny.lr, tiny.grad_clip_norm, tiny.logit_scale_max),
            (default.lr, default.grad_clip_norm, default.logit_scale_max)
        );
        for preset in ["clip-b16-gelu", "msclip-s-b16", "oner-b32"] {
            TrainConfig::for_preset(preset).unwrap().validate().unwrap();
        }
    }
}
