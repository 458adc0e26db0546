//! Impossible configurations are refused with the reason.

use msclip::model::{Activation, ClipModel, ModelConfig, PRESETS, Sharing, VisionStem, preset};

fn error_of(edit: impl FnOnce(&mut msclip::model::ModelConfig)) -> String {
    let mut config = preset("tiny").unwrap();
    edit(&mut config);
    ClipModel::new(config).unwrap_err().to_string()
}

#[test]
fn impossible_configs_are_errors() {
    assert!(error_of(|c| c.vision.heads = 3).contains("not divisible by 3 heads"));
    assert!(error_of(|c| c.text.width = 64).contains("shared weights need equal widths"));
    assert!(error_of(|c| c.text.layers = 5).contains("equal depths"));
    assert!(error_of(|c| c.vision.image_size = 50).contains("not a multiple"));
    assert!(error_of(|c| c.text.unshared_first_layer = false).contains("text layer 0 has no partner"));
    assert!(error_of(|c| c.text.context = 1).contains("too small"));
    // The same widths are fine without sharing.
    let mut clip = preset("tiny-clip").unwrap();
    clip.text.width = 64;
    clip.text.heads = 2;
    assert_eq!(clip.sharing, Sharing::None);
    assert!(ClipModel::new(clip).is_ok());
}

#[test]
fn a_shallow_cut_keeps_every_branch_stage_at_its_relative_depth() {
    let full = preset("msclip-s-b32").unwrap();
    let laterals = |layers| full.clone().with_depth(layers).unwrap().vision.parallel_branch.unwrap().lateral_layers;
    assert_eq!(laterals(12), [2, 4, 6, 8, 10]);
    assert_eq!(laterals(6), [1, 2, 3, 4, 5]);
    assert_eq!(laterals(2), [1; 5]);
    let cut = full.clone().with_depth(3).unwrap();
    assert_eq!((cut.vision.layers, cut.text.layers), (3, 3));
    // The conv stem is layer 0: one layer leaves no block.
    assert!(full.with_depth(1).unwrap_err().to_string().contains("at least one transformer block"));
    // Stages run in order, so their layers cannot decrease.
    let mut backwards = preset("tiny-msclip-s").unwrap();
    backwards.vision.parallel_branch.as_mut().unwrap().lateral_layers = vec![3, 2];
    assert!(ClipModel::new(backwards).unwrap_err().to_string().contains("must not decrease"));
}

#[test]
fn the_activation_is_kebab_case_and_configs_without_it_are_quick_gelu() {
    let gelu = preset("clip-b32-gelu").unwrap();
    assert_eq!(gelu.activation, Activation::Gelu);
    let mut json = serde_json::to_value(&gelu).unwrap();
    assert_eq!(json["activation"], "gelu");
    assert_eq!(serde_json::from_value::<ModelConfig>(json.clone()).unwrap(), gelu);
    // A config written before the option (a run's config.json) reads as QuickGELU, as it trained.
    json.as_object_mut().unwrap().remove("activation");
    let old: ModelConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.activation, Activation::QuickGelu);
    assert_eq!(serde_json::to_value(&old).unwrap()["activation"], "quick-gelu");
    // Every preset but the -gelu ones keeps QuickGELU.
    for name in PRESETS {
        let want = if name.ends_with("-gelu") { Activation::Gelu } else { Activation::QuickGelu };
        assert_eq!(preset(name).unwrap().activation, want, "{name}");
    }
    // The twins differ in the activation only.
    let plain = preset("clip-b32").unwrap();
    assert_eq!(ModelConfig { name: plain.name.clone(), activation: Activation::QuickGelu, ..gelu }, plain);
    let b16 = preset("clip-b16").unwrap();
    assert_eq!(b16.vision.stem, VisionStem::Patchify { patch: 16 });
    assert_eq!(ModelConfig { name: plain.name.clone(), vision: plain.vision.clone(), ..b16 }, plain);
}

#[test]
fn pixel_statistics_belong_to_the_preset() {
    use msclip::DType;
    use msclip::data::{PixelStats, images_to_tensor};
    // MS-CLIP's released code normalises with ImageNet's statistics; CLIP and the tiny models
    // (trained here from scratch) with CLIP's. Configs from before the choice read as CLIP's.
    for name in PRESETS {
        let want = if name.starts_with("msclip-") || name.starts_with("oner-b") {
            PixelStats::ImageNet
        } else {
            PixelStats::Clip
        };
        assert_eq!(preset(name).unwrap().pixel_stats, want, "{name}");
    }
    let mut json = serde_json::to_value(preset("msclip-s-b32").unwrap()).unwrap();
    assert_eq!(json["pixel_stats"], "imagenet");
    json.as_object_mut().unwrap().remove("pixel_stats");
    assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap().pixel_stats, PixelStats::Clip);
    // One grey pixel (128) in each: (128/255 - mean) / std per channel.
    let pixel: &[u8] = &[128, 128, 128];
    for (stats, mean, std) in [
        (PixelStats::Clip, [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
        (PixelStats::ImageNet, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ] {
        let got = images_to_tensor(&[pixel], 1, stats, DType::F64).unwrap().to_f64_vec();
        for c in 0..3 {
            assert!((got[c] - (128.0 / 255.0 - mean[c]) / std[c]).abs() < 1e-12, "{stats:?} channel {c}");
        }
    }
}

#[test]
fn the_clip_presets_force_eot_into_a_cut_caption_and_msclip_keeps_the_reference_cut() {
    use msclip::text::Truncation;
    // OpenAI's clip.tokenize(truncate=True) and open_clip put EOT in the last slot; MS-CLIP's
    // code cuts and loses it. Configs from before the choice read as the reference's cut.
    for name in PRESETS {
        let want = if name.starts_with("clip-") { Truncation::ForceEot } else { Truncation::Reference };
        assert_eq!(preset(name).unwrap().text.truncation, want, "{name}");
    }
    let mut json = serde_json::to_value(preset("clip-b32").unwrap()).unwrap();
    assert_eq!(json["text"]["truncation"], "force-eot");
    json["text"].as_object_mut().unwrap().remove("truncation");
    assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap().text.truncation, Truncation::Reference);
}
