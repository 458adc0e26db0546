//! The names MS-CLIP's original code (Hxyou/MSCLIP, `lib/models/clip_openai_pe_res_v1.py`)
//! gives our parameters and BatchNorm statistics in its state dict. The transformer blocks, the
//! embeddings, the LayerNorms, the heads and the logit scale carry the same names here and
//! there (ours were chosen as open_clip's, which the original shares with OpenAI's CLIP); the
//! conv parts are named after the original's modules:
//!
//! - the early-specialisation stem is visual transformer layer 0 (`EarlyconvRes`):
//!   `conv1`/`bn1`, then `resnet_stage.conv_i` (`ResBasicBlock_v0`: its 3x3 conv `conv1`/`bn1`
//!   and its projection shortcut `downsample.0`/`downsample.1`), then `last_conv`;
//! - the parallel branch is `visual.transformer.parallel_branch_v.k`: stage 0 a `conv`/`bn`
//!   pair, later stages one bottleneck `resnet_stage.conv_0` (`ConvResBlock`: `conv1..3`,
//!   `bn1..3`, `residual_conv`/`residual_bn`);
//! - lateral adapter k is `visual.transformer.parallel_lateral_adapter.k` (`Lateral_Adapter`):
//!   `top2bottom_dw_conv.{conv,bn}` (the branch's depthwise downsampling), `top2bottom_pw_conv.conv`
//!   (the 1x1 lift to the width), `bottom_dw_conv.{conv,bn}` (the trunk's depthwise 3x3),
//!   `ln_adapt`.

/// The original's layer 0 of the visual transformer, where the conv stem sits.
const STEM: &str = "visual.transformer.resblocks.0";
const BRANCH: &str = "visual.transformer.parallel_branch_v";
const ADAPTERS: &str = "visual.transformer.parallel_lateral_adapter";

/// The original's name of our parameter or buffer `ours`. A modality-shared weight is named
/// by its visual copy here (the one we register); [`text_copy`] names the other.
pub fn original_name(ours: &str) -> String {
    let parts: Vec<&str> = ours.split('.').collect();
    match parts.as_slice() {
        ["visual", "stem", "conv1", "conv", "weight"] => format!("{STEM}.conv1.weight"),
        ["visual", "stem", "conv1", "bn", field] => format!("{STEM}.bn1.{field}"),
        ["visual", "stem", "blocks", i, "main", "conv", "weight"] => {
            format!("{STEM}.resnet_stage.conv_{i}.conv1.weight")
        }
        ["visual", "stem", "blocks", i, "main", "bn", field] => format!("{STEM}.resnet_stage.conv_{i}.bn1.{field}"),
        ["visual", "stem", "blocks", i, "skip", "conv", "weight"] => {
            format!("{STEM}.resnet_stage.conv_{i}.downsample.0.weight")
        }
        ["visual", "stem", "blocks", i, "skip", "bn", field] => {
            format!("{STEM}.resnet_stage.conv_{i}.downsample.1.{field}")
        }
        ["visual", "stem", "last_conv", "weight"] => format!("{STEM}.last_conv.weight"),
        ["visual", "branch", "stages", "0", layer, field] => format!("{BRANCH}.0.{layer}.{field}"),
        ["visual", "branch", "stages", k, part, layer, field] => {
            let (conv, bn) = match *part {
                "reduce" => ("conv1", "bn1"),
                "spatial" => ("conv2", "bn2"),
                "expand" => ("conv3", "bn3"),
                "shortcut" => ("residual_conv", "residual_bn"),
                _ => unknown(ours),
            };
            let module = if *layer == "conv" { conv } else { bn };
            format!("{BRANCH}.{k}.resnet_stage.conv_0.{module}.{field}")
        }
        ["visual", "branch", "adapters", k, part, field] => {
            let module = match *part {
                "down" => "top2bottom_dw_conv.conv",
                "down_bn" => "top2bottom_dw_conv.bn",
                "lift" => "top2bottom_pw_conv.conv",
                "mix" => "bottom_dw_conv.conv",
                "mix_bn" => "bottom_dw_conv.bn",
                "ln" => "ln_adapt",
                _ => unknown(ours),
            };
            format!("{ADAPTERS}.{k}.{module}.{field}")
        }
        ["visual", "stem" | "branch", ..] => unknown(ours),
        _ => ours.to_string(),
    }
}

/// A conv part this map does not know: a parameter added to the model without its original name.
fn unknown(ours: &str) -> ! {
    panic!("{ours} has no name in MS-CLIP's original state dict: add it to weights::msclip::names")
}

/// The text tower's copy of a modality-shared weight, given the original's name of the visual
/// copy: the original ties text block i's `attn.in_proj_*`, `attn.out_proj` and `mlp` to visual
/// block i's by assigning the same module, so its state dict holds each under both towers.
pub fn text_copy(visual: &str) -> String {
    visual.strip_prefix("visual.").expect("shared weights are registered under their visual names").to_string()
}

/// The BatchNorm step counter the original's state dict holds beside a BatchNorm's running
/// mean (`num_batches_tracked`, int64): with PyTorch's fixed momentum it changes nothing, so it
/// is dropped.
pub fn step_counter(running_mean: &str) -> Option<String> {
    running_mean.strip_suffix(".running_mean").map(|bn| format!("{bn}.num_batches_tracked"))
}

/// The conv channels of the original's stem and parallel branch for a transformer of `width`:
/// width/16, /8, /4, /2 and the width itself (the stem's first conv, then its four blocks; the
/// branch's stages take a prefix of them).
pub fn channel_ladder(width: usize) -> [usize; 5] {
    [width / 16, width / 8, width / 4, width / 2, width]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_parts_take_the_original_module_names_and_the_rest_keeps_ours() {
        let cases = [
            ("visual.stem.conv1.conv.weight", "visual.transformer.resblocks.0.conv1.weight"),
            ("visual.stem.conv1.bn.running_var", "visual.transformer.resblocks.0.bn1.running_var"),
            ("visual.stem.blocks.3.main.bn.bias", "visual.transformer.resblocks.0.resnet_stage.conv_3.bn1.bias"),
            (
                "visual.stem.blocks.0.skip.conv.weight",
                "visual.transformer.resblocks.0.resnet_stage.conv_0.downsample.0.weight",
            ),
            (
                "visual.stem.blocks.2.skip.bn.running_mean",
                "visual.transformer.resblocks.0.resnet_stage.conv_2.downsample.1.running_mean",
            ),
            ("visual.stem.last_conv.weight", "visual.transformer.resblocks.0.last_conv.weight"),
            ("visual.branch.stages.0.bn.weight", "visual.transformer.parallel_branch_v.0.bn.weight"),
            (
                "visual.branch.stages.2.spatial.conv.weight",
                "visual.transformer.parallel_branch_v.2.resnet_stage.conv_0.conv2.weight",
            ),
            (
                "visual.branch.stages.4.shortcut.bn.running_var",
                "visual.transformer.parallel_branch_v.4.resnet_stage.conv_0.residual_bn.running_var",
            ),
            (
                "visual.branch.adapters.1.down.weight",
                "visual.transformer.parallel_lateral_adapter.1.top2bottom_dw_conv.conv.weight",
            ),
            (
                "visual.branch.adapters.0.lift.weight",
                "visual.transformer.parallel_lateral_adapter.0.top2bottom_pw_conv.conv.weight",
            ),
            (
                "visual.branch.adapters.4.mix_bn.bias",
                "visual.transformer.parallel_lateral_adapter.4.bottom_dw_conv.bn.bias",
            ),
            ("visual.branch.adapters.2.ln.weight", "visual.transformer.parallel_lateral_adapter.2.ln_adapt.weight"),
            (
                "visual.transformer.resblocks.5.attn.in_proj_weight",
                "visual.transformer.resblocks.5.attn.in_proj_weight",
            ),
            ("transformer.resblocks.0.mlp.c_fc.bias", "transformer.resblocks.0.mlp.c_fc.bias"),
            ("logit_scale", "logit_scale"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(original_name(ours), theirs, "{ours}");
        }
        assert_eq!(
            text_copy("visual.transformer.resblocks.4.mlp.c_proj.weight"),
            "transformer.resblocks.4.mlp.c_proj.weight"
        );
        assert_eq!(
            step_counter("visual.transformer.resblocks.0.bn1.running_mean").as_deref(),
            Some("visual.transformer.resblocks.0.bn1.num_batches_tracked")
        );
        assert_eq!(channel_ladder(768), [48, 96, 192, 384, 768]);
    }
}
