//! DESIGN section 8, level 3: the model against a state PyTorch computed, not against itself.
//! scripts/make_reference_state.py built a small share-nothing CLIP with open_clip's own model
//! class (open_clip 3.3.0, torch 2.15.0), saved its weights as open_clip's state dict, and
//! computed in float64 the features, the loss, every parameter's gradient and the losses of three
//! AdamW steps on fixed inputs (tests/data/), once with QuickGELU and once with the exact GELU
//! (the same weights). Here the weights come in through the open_clip importer and the same
//! numbers come out, for both activations: on the CPU in f64 to rounding, in f32 and on the
//! emulated GPU within f32 tolerances.

mod common;

use std::path::Path;

use common::gpu::model_devices;
use common::reference::{self, State, Tolerances, worst_gradient};
use common::relative_error;
use msclip::autograd::{self, Gradients};
use msclip::model::{Activation, ClipModel, ModelConfig, TextConfig, TextEncoder, VisionConfig, VisionStem, preset};
use msclip::nn::{AdamW, AdamWConfig, ParamGroup, ParamStore, Update};
use msclip::weights::open_clip;
use msclip::{DType, Device, Rng};
use safetensors::SafeTensors;

/// The weights of both variants (open_clip draws the same ones whatever the activation).
const WEIGHTS: &str = "tests/data/reference_clip.safetensors";

/// One of the script's models: its activation and the file of its state.
#[derive(Debug, Clone, Copy)]
struct Variant {
    activation: Activation,
    state: &'static str,
}

/// CONFIG (open_clip's QuickGELU) and GELU_CONFIG (nn.GELU) of the script.
const VARIANTS: [Variant; 2] = [
    Variant { activation: Activation::QuickGelu, state: "tests/data/reference_clip_state.safetensors" },
    Variant { activation: Activation::Gelu, state: "tests/data/reference_clip_gelu_state.safetensors" },
];

/// The script's CONFIG, as a model config: tiny-clip's layout, narrower, LayerNorm eps 1e-5,
/// with the variant's activation.
fn reference_config(activation: Activation) -> ModelConfig {
    let mut config = preset("tiny-clip").unwrap();
    config.name = "reference-clip".into();
    config.embed_dim = 24;
    config.vision = VisionConfig {
        image_size: 40,
        width: 48,
        layers: 2,
        heads: 3,
        stem: VisionStem::Patchify { patch: 8 },
        parallel_branch: None,
    };
    config.text = TextConfig {
        context: 13,
        vocab: 97,
        width: 32,
        layers: 2,
        heads: 2,
        unshared_first_layer: false,
        encoder: TextEncoder::Causal,
        truncation: msclip::text::Truncation::ForceEot,
    };
    config.ln_eps = 1e-5;
    config.activation = activation;
    config
}

fn reference(variant: Variant) -> State {
    reference::read_state(variant.state)
}

/// The variant's model with open_clip's weights, in `dtype` on `device`.
fn imported(variant: Variant, dtype: DType, device: Device) -> (ClipModel, ParamStore) {
    let model = ClipModel::new(reference_config(variant.activation)).unwrap();
    let (mut params, _) = model.init_params(&mut Rng::new(99), dtype).unwrap();
    open_clip::load(Path::new(WEIGHTS), &model.config, &mut params).unwrap();
    params.to_device(device).unwrap();
    (model, params)
}

/// Features, loss and the tape's gradients of the reference batch.
fn forward(model: &ClipModel, params: &ParamStore, r: &State, dtype: DType) -> (Vec<f64>, Vec<f64>, f64, Gradients) {
    let mut buffers = model.init_params(&mut Rng::new(0), dtype).unwrap().1;
    let images = r.images.to_dtype(dtype).unwrap().to_device(params.device()).unwrap();
    let image_features =
        autograd::no_grad(|| model.encode_image(params, &mut buffers, &images, msclip::model::Mode::Eval))
            .unwrap()
            .to_f64_vec();
    let text_features = autograd::no_grad(|| model.encode_text(params, &r.tokens)).unwrap().to_f64_vec();
    let loss = model.contrastive_loss(params, &mut buffers, &images, &r.tokens, None).unwrap();
    let value = loss.item().unwrap();
    (image_features, text_features, value, autograd::backward(&loss).unwrap())
}

#[test]
fn the_architecture_is_the_one_pytorch_built() {
    for variant in VARIANTS {
        let r = reference(variant);
        let described = open_clip::describe(&reference_config(variant.activation)).unwrap();
        let config: serde_json::Value = serde_json::from_str(&r.metadata["open_clip_config"]).unwrap();
        assert_eq!(described.config, config, "{variant:?}: CLIP(**config) arguments");
    }
    // The two states are two functions of the same weights and inputs: the features differ.
    let [quick, exact] = VARIANTS.map(reference);
    assert_eq!(quick.tokens, exact.tokens);
    assert_eq!(quick.images.to_f64_vec(), exact.images.to_f64_vec());
    let apart = relative_error(&exact.image_features, &quick.image_features);
    assert!(apart > 1e-3, "GELU's features within {apart:.1e} of QuickGELU's");
}

/// Runs the variant's reference batch in `dtype` on `device` and checks features, loss and every
/// gradient.
fn assert_reproduces(variant: Variant, r: &State, dtype: DType, device: Device, allowed: Tolerances) {
    let what = format!("{:?}, {device} {dtype:?}", variant.activation);
    let (model, params) = imported(variant, dtype, device);
    let (img, txt, loss, grads) = forward(&model, &params, r, dtype);
    let feature_err = relative_error(&img, &r.image_features).max(relative_error(&txt, &r.text_features));
    assert!(feature_err <= allowed.features, "{what}: features off by {feature_err:.2e}");
    let loss_err = (loss - r.loss).abs() / r.loss;
    assert!(loss_err <= allowed.loss, "{what}: loss {loss} against PyTorch's {}", r.loss);
    let (worst, name) = worst_gradient(&what, (&params, &grads), &r.grads, str::to_string, allowed.gradient);
    eprintln!("{what}: features {feature_err:.1e}, loss {loss_err:.1e}, worst gradient {name} {worst:.1e}");
}

#[test]
fn the_cpu_reproduces_pytorchs_features_loss_and_every_gradient() {
    for variant in VARIANTS {
        let r = reference(variant);
        // f64 throughout: only the order of additions differs from PyTorch's. Measured
        // (2026-12-06), QuickGELU: features 9.9e-16, loss 5.3e-16, worst gradient 2.7e-15 (a
        // LayerNorm gain); GELU: features 9.6e-16, loss 0, worst gradient 3.4e-15 (the same gain).
        let f64_tol = Tolerances { features: 1e-13, loss: 1e-13, gradient: 1e-12 };
        assert_reproduces(variant, &r, DType::F64, Device::Cpu, f64_tol);
        // f32 weights and arithmetic against the f64 reference: f32 rounding only (measured:
        // QuickGELU features 3.4e-7, worst gradient 9.1e-7; GELU 2.9e-7 and 9.4e-7).
        let f32_tol = Tolerances { features: 5e-6, loss: 1e-5, gradient: 1e-5 };
        assert_reproduces(variant, &r, DType::F32, Device::Cpu, f32_tol);
    }
}

#[test]
fn three_adamw_steps_give_pytorchs_losses() {
    for variant in VARIANTS {
        adamw_steps_give_pytorchs_losses(variant);
    }
}

fn adamw_steps_give_pytorchs_losses(variant: Variant) {
    let r = reference(variant);
    let (model, mut params) = imported(variant, DType::F64, Device::Cpu);
    let groups = vec![
        ParamGroup { name: "decay".into(), weight_decay: 0.2, lr_scale: 1.0 },
        ParamGroup { name: "no_decay".into(), weight_decay: 0.0, lr_scale: 1.0 },
    ];
    let config = AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-6 };
    // torch's split in the script: weight decay on tensors of two or more dimensions.
    let mut optimizer = AdamW::new(&params, config, groups, |_, t| usize::from(t.dims().len() < 2)).unwrap();
    for (step, want) in r.adamw_losses.iter().enumerate() {
        let (_, _, _, grads) = forward(&model, &params, &r, DType::F64);
        optimizer.step(&mut params, None, &grads, Update::at(1e-3)).unwrap();
        let (_, _, loss, _) = forward(&model, &params, &r, DType::F64);
        let what = format!("{:?}: AdamW step {}", variant.activation, step + 1);
        eprintln!("{what}: loss off by {:.1e}", (loss - want).abs() / want);
        assert!((loss - want).abs() <= 1e-12 * want, "{what}: loss {loss} against PyTorch's {want}");
    }
}

#[test]
fn the_emulated_gpu_reproduces_them_in_f32() {
    for variant in VARIANTS {
        let r = reference(variant);
        for device in model_devices() {
            // Measured on the emulator, QuickGELU: features 3.2e-7, worst gradient 7.4e-7 (an
            // in_proj weight); GELU: features 3.0e-7, worst gradient 6.9e-7 (ln_2.bias).
            let tol = Tolerances { features: 5e-6, loss: 1e-5, gradient: 1e-5 };
            assert_reproduces(variant, &r, DType::F32, device, tol);
        }
    }
}

#[test]
fn exporting_the_imported_weights_gives_open_clips_file_back() {
    // What open_clip wrote, through our importer and exporter: every tensor with the same name,
    // shape, dtype and bytes.
    let (model, params) = imported(VARIANTS[0], DType::F32, Device::Cpu);
    let ours = open_clip::to_bytes(&model.config, &params, safetensors::Dtype::F32).unwrap();
    let theirs = std::fs::read(WEIGHTS).unwrap();
    let (ours, theirs) = (SafeTensors::deserialize(&ours).unwrap(), SafeTensors::deserialize(&theirs).unwrap());
    let mut names = ours.names();
    names.sort();
    let mut their_names = theirs.names();
    their_names.sort();
    assert_eq!(names, their_names);
    for name in names {
        let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        assert!(a.data() == b.data(), "{name}: other values");
    }
}

#[test]
fn clip_b32_has_open_clips_tensors_one_to_one() {
    // open_clip 3.3.0's ViT-B-32-quickgelu and ViT-B-16-quickgelu state dicts, every name and
    // shape (written by the script); the plain ViT-B-32 / ViT-B-16 have the same tensors.
    for (preset_name, shapes) in [("clip-b32", "vit_b_32_quickgelu"), ("clip-b16", "vit_b_16_quickgelu")] {
        let text = std::fs::read_to_string(format!("tests/data/open_clip_shapes_{shapes}.json")).unwrap();
        let theirs: std::collections::BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
        let model = ClipModel::new(preset(preset_name).unwrap()).unwrap();
        let ours = open_clip::expected_tensors(model.spec.params.iter().map(|p| (p.name.as_str(), p.shape.as_slice())));
        let ours: std::collections::BTreeMap<String, Vec<usize>> =
            ours.into_iter().map(|e| (e.name, e.shape)).collect();
        assert_eq!(ours.len(), 302, "{preset_name}");
        assert_eq!(ours, theirs, "{preset_name}");
    }
    // open_clip 3.3.0's model_configs/*.json of the four (written by the script).
    let text = std::fs::read_to_string("tests/data/open_clip_model_configs.json").unwrap();
    let configs: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (preset_name, open_clip_name, quick_gelu) in [
        ("clip-b32", "ViT-B-32-quickgelu", Some(true)),
        ("clip-b32-gelu", "ViT-B-32", None),
        ("clip-b16", "ViT-B-16-quickgelu", Some(true)),
        ("clip-b16-gelu", "ViT-B-16", None),
    ] {
        let described = open_clip::describe(&preset(preset_name).unwrap()).unwrap();
        assert_eq!(described.name, Some(open_clip_name), "{preset_name}");
        // The key only in the -quickgelu configs, as open_clip's files have it.
        assert_eq!(described.config.get("quick_gelu").and_then(|v| v.as_bool()), quick_gelu, "{preset_name}");
        // Ours writes out head_width, at open_clip's default (64); otherwise open_clip's file.
        let mut ours = described.config.clone();
        let head_width = ours["vision_cfg"].as_object_mut().unwrap().remove("head_width");
        assert_eq!(head_width, Some(serde_json::json!(64)), "{preset_name}");
        assert_eq!(ours, configs[open_clip_name], "{preset_name}: open_clip's {open_clip_name}.json");
    }
}
