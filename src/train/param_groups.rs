//! Which AdamW group each parameter joins: the open_clip split (no weight decay for gains,
//! biases, embeddings and the logit scale) plus MS-CLIP's own group for the weights the two
//! modalities share (the configs' LR_SHARE / WD_SHARE).

use crate::model::{ModelSpec, Role};
use crate::nn::ParamGroup;

pub const DECAY: usize = 0;
pub const NO_DECAY: usize = 1;
pub const SHARED: usize = 2;

/// The three groups, in the order of the constants above.
pub fn groups(weight_decay: f64, shared_weight_decay: f64, shared_lr_scale: f64) -> Vec<ParamGroup> {
    vec![
        ParamGroup { name: "decay".into(), weight_decay, lr_scale: 1.0 },
        ParamGroup { name: "no_decay".into(), weight_decay: 0.0, lr_scale: 1.0 },
        ParamGroup { name: "shared".into(), weight_decay: shared_weight_decay, lr_scale: shared_lr_scale },
    ]
}

/// The group of the parameter registered as `name` in `spec`.
pub fn assign(spec: &ModelSpec, name: &str) -> usize {
    let Some(p) = spec.params.iter().find(|p| p.name == name) else { return DECAY };
    let is_embedding = name.contains("embedding") || name == "logit_scale";
    if p.shape.len() < 2 || is_embedding {
        NO_DECAY
    } else if p.role == Role::Shared {
        SHARED
    } else {
        DECAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClipModel, preset};

    #[test]
    fn groups_follow_open_clip_and_msclip() {
        let model = ClipModel::new(preset("msclip-s-b32").unwrap()).unwrap();
        let group = |name: &str| assign(&model.spec, name);
        assert_eq!(group("visual.transformer.resblocks.3.attn.in_proj_weight"), SHARED);
        assert_eq!(group("visual.transformer.resblocks.3.attn.in_proj_bias"), NO_DECAY);
        assert_eq!(group("transformer.resblocks.0.attn.in_proj_weight"), DECAY); // unshared text layer 0
        assert_eq!(group("token_embedding.weight"), NO_DECAY);
        assert_eq!(group("visual.positional_embedding"), NO_DECAY);
        assert_eq!(group("visual.ln_pre.weight"), NO_DECAY);
        assert_eq!(group("logit_scale"), NO_DECAY);
        assert_eq!(group("visual.proj"), DECAY);
        assert_eq!(group("visual.stem.conv1.conv.weight"), DECAY);
    }
}
