//! open_clip's state dict out and in: a written file reads back to the same weights, names the
//! architecture for open_clip, and what does not fit a model is refused with every problem
//! listed, leaving the model's weights as they were.

mod common;

use std::path::Path;

use common::files::rewritten;
use msclip::model::{ClipModel, preset};
use msclip::nn::ParamStore;
use msclip::weights::open_clip;
use msclip::{DType, Rng};
use safetensors::{Dtype, SafeTensors};

fn model_and_params(name: &str, seed: u64) -> (ClipModel, ParamStore) {
    let model = ClipModel::new(preset(name).unwrap()).unwrap();
    let (params, _) = model.init_params(&mut Rng::new(seed), DType::F32).unwrap();
    (model, params)
}

fn values(params: &ParamStore) -> Vec<Vec<f64>> {
    params.ids().map(|id| params.get(id).to_f64_vec()).collect()
}

#[test]
fn a_written_file_reads_back_to_the_same_weights() {
    let (model, params) = model_and_params("tiny-clip", 1);
    let bytes = open_clip::to_bytes(&model.config, &params, Dtype::F32).unwrap();
    let (_, mut other) = model_and_params("tiny-clip", 2);
    open_clip::load_bytes(&bytes, "file", &model.config, &mut other).unwrap();
    assert_eq!(values(&other), values(&params), "f32 weights come back bit for bit");

    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("logit_scale").unwrap().shape(), &[] as &[usize], "0-d, as open_clip's");
    assert_eq!(file.tensor("visual.conv1.weight").unwrap().shape(), &[128, 3, 8, 8]);
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let config: serde_json::Value = serde_json::from_str(&meta["open_clip_config"]).unwrap();
    assert_eq!(config["vision_cfg"]["patch_size"], 8);
    assert_eq!(config["vision_cfg"]["head_width"], 32);
    assert_eq!(config["quick_gelu"], true);
    assert_eq!(meta["open_clip_model"], "", "tiny-clip is no registered open_clip model");
    assert_eq!(meta["layer_norm_eps"].parse::<f64>().unwrap(), 1e-12, "the loader must set it");

    for (dtype, rtol) in [(Dtype::BF16, 1.0 / 256.0), (Dtype::F16, 1.0 / 2048.0)] {
        let bytes = open_clip::to_bytes(&model.config, &params, dtype).unwrap();
        open_clip::load_bytes(&bytes, "file", &model.config, &mut other).unwrap();
        for (got, want) in values(&other).iter().zip(values(&params)) {
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= rtol * w.abs() + 1e-7, "{dtype:?}: {w} came back as {g}");
            }
        }
    }
    assert!(open_clip::to_bytes(&model.config, &params, Dtype::I32).is_err());
}

#[test]
fn every_mismatch_is_listed_and_nothing_changes() {
    let (model, params) = model_and_params("tiny-clip", 1);
    let bytes = open_clip::to_bytes(&model.config, &params, Dtype::F32).unwrap();
    let broken = rewritten(&bytes, |tensors| {
        tensors.retain(|(name, ..)| name != "visual.proj");
        for (name, dtype, shape, data) in tensors.iter_mut() {
            match name.as_str() {
                "token_embedding.weight" => {
                    shape[0] -= 1;
                    data.truncate(data.len() - 128 * 4);
                }
                "ln_final.bias" => *dtype = Dtype::I32,
                _ => {}
            }
        }
        tensors.push(("visual.attn_pool.query".into(), Dtype::F32, vec![1], vec![0; 4]));
    });
    let (_, mut target) = model_and_params("tiny-clip", 2);
    let before = values(&target);
    let message =
        open_clip::load_bytes(&broken, "edited.safetensors", &model.config, &mut target).unwrap_err().to_string();
    for want in [
        "edited.safetensors",
        "does not fit model \"tiny-clip\": 4 problem(s)",
        "missing visual.proj [128, 128]",
        "token_embedding.weight: shape [1023, 128] in the file, [1024, 128] in the model",
        "ln_final.bias: dtype I32, not a floating-point type",
        "unexpected visual.attn_pool.query",
    ] {
        assert!(message.contains(want), "expected {want:?} in:\n{message}");
    }
    assert_eq!(values(&target), before, "a refused file changes nothing");

    // Another architecture's file: every differing shape named.
    let reference = std::fs::read("tests/data/reference_clip.safetensors").unwrap();
    let message = open_clip::load_bytes(&reference, "ref", &model.config, &mut target).unwrap_err().to_string();
    assert!(
        message.contains("visual.conv1.weight: shape [48, 3, 8, 8] in the file, [128, 3, 8, 8] in the model"),
        "{message}"
    );
    assert!(message.contains("missing visual.transformer.resblocks.3.ln_1.weight"), "{message}");
}

#[test]
fn values_that_are_not_finite_are_refused() {
    let (model, params) = model_and_params("tiny-clip", 1);
    let bytes = open_clip::to_bytes(&model.config, &params, Dtype::F32).unwrap();
    let poisoned = rewritten(&bytes, |tensors| {
        let (_, _, _, data) = tensors.iter_mut().find(|(name, ..)| name == "visual.ln_pre.weight").unwrap();
        data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let (_, mut target) = model_and_params("tiny-clip", 2);
    let before = values(&target);
    let message =
        open_clip::load_bytes(&poisoned, "nan.safetensors", &model.config, &mut target).unwrap_err().to_string();
    assert!(message.contains("not finite") && message.contains("visual.ln_pre.weight (1 of 128)"), "{message}");
    assert_eq!(values(&target), before);
}

#[test]
fn what_open_clip_cannot_hold_is_refused_with_the_reason() {
    for (name, reason) in [
        ("tiny", "share weights"),
        ("tiny-msclip", "share weights"),
        ("tiny-oner", "share weights"),
        ("msclip-s-b32", "share weights"),
    ] {
        let model = ClipModel::new(preset(name).unwrap()).unwrap();
        let message = open_clip::describe(&model.config).unwrap_err().to_string();
        assert!(
            message.contains(reason) && message.contains("tiny-clip, clip-b32, clip-b32-gelu"),
            "{name}: {message}"
        );
    }
    let mut config = preset("tiny-clip").unwrap();
    config.type_embedding = true;
    assert!(open_clip::describe(&config).unwrap_err().to_string().contains("modality-type"));
    let (model, mut params) = model_and_params("tiny", 1);
    let message = open_clip::to_bytes(&model.config, &params, Dtype::F32).unwrap_err().to_string();
    assert!(message.contains("conv stem") || message.contains("share weights"), "{message}");
    let missing =
        open_clip::load(Path::new("/no/such/weights.safetensors"), &preset("tiny-clip").unwrap(), &mut params);
    assert!(missing.unwrap_err().to_string().contains("/no/such/weights.safetensors"));
    let (model, mut params) = model_and_params("tiny-clip", 1);
    let garbage = open_clip::load_bytes(b"not a safetensors file", "junk.bin", &model.config, &mut params);
    assert!(garbage.unwrap_err().to_string().contains("junk.bin: not a readable safetensors file"));
}
