//! The original MS-CLIP code's state dict in: the B-scale presets have its tensors one to one,
//! a file written by PyTorch (scripts/make_reference_state_msclip.py) loads with its shared
//! tensors tied and its BatchNorm statistics mapped, and what does not fit is refused with
//! every problem listed, leaving the model's weights as they were.

mod common;

use std::collections::BTreeMap;

use common::files::{RawTensor, rewritten};
use common::reference::{MSCLIP_WEIGHTS, msclip_config};
use msclip::model::{Buffers, ClipModel, preset};
use msclip::nn::ParamStore;
use msclip::weights::msclip::{OriginalLayout, original_name};
use msclip::{DType, Rng};
use safetensors::Dtype;

fn fresh(seed: u64) -> (ClipModel, ParamStore, Buffers) {
    let model = ClipModel::new(msclip_config()).unwrap();
    let (params, buffers) = model.init_params(&mut Rng::new(seed), DType::F32).unwrap();
    (model, params, buffers)
}

/// A model's weights and running statistics, each tensor's values in order.
type Values = (Vec<Vec<f64>>, Vec<Vec<f64>>);

/// Reads `bytes` into a fresh model: its weights and running statistics, or the error.
fn read(bytes: &[u8]) -> Result<Values, String> {
    let (model, mut params, mut buffers) = fresh(7);
    let before = values(&params, &buffers);
    let layout = OriginalLayout::of(&model).unwrap();
    match layout.read(bytes, "file", &model.config.name, &mut params, &mut buffers) {
        Ok(()) => Ok(values(&params, &buffers)),
        Err(e) => {
            assert_eq!(values(&params, &buffers), before, "a refused file changes nothing");
            Err(e.to_string())
        }
    }
}

fn values(params: &ParamStore, buffers: &Buffers) -> Values {
    (
        params.ids().map(|id| params.get(id).to_f64_vec()).collect(),
        buffers.iter().map(|(_, t)| t.to_f64_vec()).collect(),
    )
}

fn pytorchs_file() -> Vec<u8> {
    std::fs::read(MSCLIP_WEIGHTS).unwrap()
}

/// Whether a name is the text tower's copy of a shared weight (text blocks 1.. of the reference
/// model, whose layer 0 is unshared).
fn is_text_copy(name: &str) -> bool {
    name.starts_with("transformer.resblocks.") && !name.starts_with("transformer.resblocks.0.") && {
        let rest = name.splitn(4, '.').nth(3).unwrap();
        rest.starts_with("attn.") || rest.starts_with("mlp.")
    }
}

#[test]
fn msclip_s_b32_and_b16_have_the_originals_tensors_one_to_one() {
    // Every name and shape of the state dict of MS-CLIP-S at B/32 and B/16, written by the
    // script from its PyTorch model (checked there against the original's 521 tensors and
    // 210,366,049 values at B/32): both copies of the shared tensors and the BatchNorm counters.
    for (preset_name, shapes) in [("msclip-s-b32", "b32"), ("msclip-s-b16", "b16")] {
        let text = std::fs::read_to_string(format!("tests/data/msclip_original_shapes_{shapes}.json")).unwrap();
        let theirs: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
        let model = ClipModel::new(preset(preset_name).unwrap()).unwrap();
        let ours: BTreeMap<String, Vec<usize>> =
            OriginalLayout::of(&model).unwrap().state_dict_shapes().into_iter().collect();
        assert_eq!(ours.len(), 521, "{preset_name}");
        assert_eq!(ours, theirs, "{preset_name}");
    }
}

#[test]
fn the_other_msclip_presets_have_the_originals_layout_and_the_rest_are_refused_with_the_reason() {
    // Plain MS-CLIP: a patchify conv1 and all twelve layers shared, text layer 0 included.
    let plain = OriginalLayout::of(&ClipModel::new(preset("msclip-b32").unwrap()).unwrap()).unwrap();
    let names: BTreeMap<String, Vec<usize>> = plain.state_dict_shapes().into_iter().collect();
    assert_eq!(names["visual.conv1.weight"], [768, 3, 32, 32]);
    assert!(names.contains_key("transformer.resblocks.0.attn.in_proj_weight"), "text layer 0 shared");
    assert!(!names.keys().any(|n| n.contains("running_mean")), "no BatchNorm without conv parts");
    let early = OriginalLayout::of(&ClipModel::new(preset("msclip-es-b32").unwrap()).unwrap()).unwrap();
    assert!(early.state_dict_shapes().iter().any(|(n, _)| n == "visual.transformer.resblocks.0.last_conv.weight"));

    for (name, reason) in [
        ("tiny-msclip-s", "conv stem's channels [32, 64, 128, 128]"),
        ("tiny", "conv stem's channels"),
        ("tiny-clip", "share nothing"),
        ("tiny-oner", "single tower"),
        ("oner-b32", "single tower"),
    ] {
        let err = OriginalLayout::of(&ClipModel::new(preset(name).unwrap()).unwrap()).unwrap_err().to_string();
        assert!(err.contains(reason) && err.contains("MS-CLIP's original code"), "{name}: {err}");
    }
    let mut stacked = msclip_config();
    stacked.vision.parallel_branch.as_mut().unwrap().lateral_layers = vec![1, 1, 3];
    let err = OriginalLayout::of(&ClipModel::new(stacked).unwrap()).unwrap_err().to_string();
    assert!(err.contains("several branch stages before one block"), "{err}");
}

#[test]
fn pytorchs_file_loads_its_weights_and_running_statistics() {
    let (params, buffers) = read(&pytorchs_file()).unwrap();
    let bytes = pytorchs_file();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap().tensors();
    let (model, store, bufs) = fresh(7);
    let value_of = |ours: &str| -> Vec<f64> {
        let theirs = original_name(ours);
        let view = &file.iter().find(|(n, _)| *n == theirs).unwrap_or_else(|| panic!("{theirs}")).1;
        view.data().chunks_exact(4).map(|w| f32::from_le_bytes(w.try_into().unwrap()) as f64).collect()
    };
    for (id, value) in store.ids().zip(&params) {
        assert_eq!(*value, value_of(store.name(id)), "{}", store.name(id));
    }
    for ((name, _), value) in bufs.iter().zip(&buffers) {
        assert_eq!(*value, value_of(name), "{name}");
    }
    assert_eq!(model.spec.params.len(), params.len());
}

/// PyTorch's file without the tensors `drop` names.
fn without(drop: impl Fn(&str) -> bool) -> Vec<u8> {
    rewritten(&pytorchs_file(), |tensors: &mut Vec<RawTensor>| tensors.retain(|(name, ..)| !drop(name)))
}

#[test]
fn one_copy_of_each_shared_tensor_is_enough_and_the_counters_may_be_missing() {
    let whole = read(&pytorchs_file()).unwrap();
    // As safetensors' save_model leaves shared tensors: one name of each.
    assert_eq!(read(&without(is_text_copy)).unwrap(), whole, "visual copies alone");
    let is_visual_copy = |n: &str| n.strip_prefix("visual.").is_some_and(is_text_copy);
    assert_eq!(read(&without(is_visual_copy)).unwrap(), whole, "text copies alone");
    assert_eq!(read(&without(|n| n.ends_with("num_batches_tracked"))).unwrap(), whole, "no counters");
}

#[test]
fn copies_of_a_shared_tensor_that_differ_are_refused_naming_both() {
    let edited = rewritten(&pytorchs_file(), |tensors| {
        for (name, _, _, data) in tensors.iter_mut() {
            if name == "transformer.resblocks.2.mlp.c_fc.weight" || name == "transformer.resblocks.3.attn.in_proj_bias"
            {
                let first = f32::from_le_bytes(data[..4].try_into().unwrap());
                data[..4].copy_from_slice(&(first + 0.25).to_le_bytes());
            }
        }
    });
    let err = read(&edited).unwrap_err();
    assert!(err.contains("the two copies of 2 modality-shared tensor(s) differ"), "{err}");
    assert!(
        err.contains(
            "visual.transformer.resblocks.2.mlp.c_fc.weight and transformer.resblocks.2.mlp.c_fc.weight: \
             1 of 4096 values, by up to 2.500e-1"
        ),
        "{err}"
    );
    assert!(
        err.contains("visual.transformer.resblocks.3.attn.in_proj_bias and transformer.resblocks.3.attn.in_proj_bias")
    );
}

#[test]
fn every_mismatch_is_listed_in_one_error() {
    let edited = rewritten(&pytorchs_file(), |tensors| {
        tensors.retain(|(name, ..)| name != "visual.transformer.parallel_lateral_adapter.1.ln_adapt.bias");
        for (name, dtype, shape, data) in tensors.iter_mut() {
            match name.as_str() {
                "visual.transformer.resblocks.0.resnet_stage.conv_2.downsample.0.weight" => {
                    shape[0] -= 1;
                    data.truncate(data.len() - 8 * 4);
                }
                "visual.transformer.parallel_branch_v.1.resnet_stage.conv_0.bn2.running_var" => *dtype = Dtype::I32,
                _ => {}
            }
        }
        tensors.push(("visual.transformer.parallel_branch_v.3.conv.weight".into(), Dtype::F32, vec![1], vec![0; 4]));
    });
    let err = read(&edited).unwrap_err();
    let want = [
        "does not fit model \"reference-msclip-s\": 4 problem(s)",
        "visual.transformer.resblocks.0.resnet_stage.conv_2.downsample.0.weight: shape [15, 8, 1, 1] in the file, \
         [16, 8, 1, 1] in the model",
        "visual.transformer.parallel_branch_v.1.resnet_stage.conv_0.bn2.running_var: dtype I32, not a \
         floating-point type",
        "missing visual.transformer.parallel_lateral_adapter.1.ln_adapt.bias [32]",
        "unexpected visual.transformer.parallel_branch_v.3.conv.weight",
    ];
    for line in want {
        assert!(err.contains(line), "{line:?} not in:\n{err}");
    }
    assert!(!err.contains("num_batches_tracked"), "the counters are dropped, not reported: {err}");
}

#[test]
fn values_that_are_not_finite_are_refused_by_name() {
    let poisoned = rewritten(&pytorchs_file(), |tensors| {
        for (name, _, _, data) in tensors.iter_mut() {
            if name == "visual.transformer.resblocks.0.bn1.running_var" {
                data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
    });
    let err = read(&poisoned).unwrap_err();
    assert!(
        err.contains("not finite") && err.contains("visual.transformer.resblocks.0.bn1.running_var (1 of 2)"),
        "{err}"
    );
}
