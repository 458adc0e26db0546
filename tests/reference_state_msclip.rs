//! DESIGN section 8, level 3, for MS-CLIP-S: scripts/make_reference_state_msclip.py wrote a tiny
//! MS-CLIP-S in PyTorch from the specification, with the original MS-CLIP code's module layout
//! (torch 2.15.0), saved its state dict in the original's names through
//! scripts/convert_msclip_pth.py, and computed in float64 the eval-mode features, the train-mode
//! loss, every parameter's gradient, the BatchNorm running statistics after that step and the
//! losses of three AdamW steps (tests/data/). Here the weights come in through the importer of
//! the original's state dict (which ties the shared tensors and maps the BatchNorm statistics)
//! and the same numbers come out: on the CPU in f64 to rounding, in f32 and on the emulated GPU
//! within f32 tolerances. A shared weight's gradient is the sum of both towers' uses on both
//! sides: PyTorch's modules are shared objects, ours one parameter.

mod common;

use std::path::Path;

use common::gpu::model_devices;
use common::reference::{self, MSCLIP_STATE, MSCLIP_WEIGHTS, State, Tolerances, msclip_config, worst_gradient};
use common::relative_error;
use msclip::autograd::{self, Gradients};
use msclip::model::{Buffers, ClipModel, Mode, Role, VisionStem};
use msclip::nn::{AdamW, AdamWConfig, ParamGroup, ParamStore, Update};
use msclip::weights::msclip::{self as original, original_name};
use msclip::{DType, Device, Rng};

fn reference() -> State {
    reference::read_state(MSCLIP_STATE)
}

/// The model with PyTorch's weights and running statistics, in `dtype` on `device`.
fn imported(dtype: DType, device: Device) -> (ClipModel, ParamStore, Buffers) {
    let model = ClipModel::new(msclip_config()).unwrap();
    let (mut params, mut buffers) = model.init_params(&mut Rng::new(99), dtype).unwrap();
    original::load(Path::new(MSCLIP_WEIGHTS), &model, &mut params, &mut buffers).unwrap();
    params.to_device(device).unwrap();
    buffers.to_device(device).unwrap();
    (model, params, buffers)
}

/// Features (eval mode), loss and the tape's gradients (train mode, which updates `buffers`) of
/// the reference batch.
fn forward(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    r: &State,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>, f64, Gradients) {
    let images = r.images.to_dtype(dtype).unwrap().to_device(params.device()).unwrap();
    let image_features =
        autograd::no_grad(|| model.encode_image(params, buffers, &images, Mode::Eval)).unwrap().to_f64_vec();
    let text_features = autograd::no_grad(|| model.encode_text(params, &r.tokens)).unwrap().to_f64_vec();
    let loss = model.contrastive_loss(params, buffers, &images, &r.tokens, None).unwrap();
    let value = loss.item().unwrap();
    (image_features, text_features, value, autograd::backward(&loss).unwrap())
}

#[test]
fn the_architecture_is_the_one_pytorch_built() {
    let c: serde_json::Value = serde_json::from_str(&reference().metadata["config"]).unwrap();
    let config = msclip_config();
    let (v, t) = (&config.vision, &config.text);
    let VisionStem::ConvStem { strides, .. } = &v.stem else { panic!("a conv stem") };
    let branch = v.parallel_branch.as_ref().unwrap();
    let ours = serde_json::json!({
        "width": v.width, "heads": v.heads, "layers": v.layers, "image_size": v.image_size,
        "stem_strides": strides, "branch_strides": branch.strides, "lateral_layers": branch.lateral_layers,
        "embed_dim": config.embed_dim, "context": t.context, "vocab": t.vocab,
    });
    assert_eq!(ours, c);
    assert_eq!((t.width, t.heads, t.layers), (v.width, v.heads, v.layers));
    assert_eq!((config.ln_eps, config.bn_eps, config.bn_eps_branch_blocks), (1e-12, 1e-5, 1e-6));
}

/// Runs the reference batch in `dtype` on `device` and checks features, loss, every gradient
/// and every running statistic.
fn assert_reproduces(r: &State, dtype: DType, device: Device, allowed: Tolerances) {
    let what = format!("{device} {dtype:?}");
    let (model, params, mut buffers) = imported(dtype, device);
    let (img, txt, loss, grads) = forward(&model, &params, &mut buffers, r, dtype);
    let feature_err = relative_error(&img, &r.image_features).max(relative_error(&txt, &r.text_features));
    assert!(feature_err <= allowed.features, "{what}: features off by {feature_err:.2e}");
    let loss_err = (loss - r.loss).abs() / r.loss;
    assert!(loss_err <= allowed.loss, "{what}: loss {loss} against PyTorch's {}", r.loss);
    let (worst, name) = worst_gradient(&what, (&params, &grads), &r.grads, original_name, allowed.gradient);
    let mut running_err: f64 = 0.0;
    for (ours, value) in buffers.iter() {
        let theirs = original_name(ours);
        let want = &r.running.iter().find(|(n, _)| *n == theirs).unwrap_or_else(|| panic!("no {theirs}")).1;
        running_err = running_err.max(relative_error(&value.to_f64_vec(), want));
    }
    assert_eq!(r.running.len(), buffers.iter().count(), "a running statistic per buffer");
    assert!(running_err <= allowed.features, "{what}: running statistics off by {running_err:.2e}");
    eprintln!(
        "{what}: features {feature_err:.1e}, loss {loss_err:.1e}, worst gradient {name} {worst:.1e}, \
         running statistics {running_err:.1e}"
    );
}

/// In f32, against PyTorch's f64. The gradient bound is twice the CLIP state's: the worst one
/// is the bias of the branch's first BatchNorm (measured 4.3e-6 on the CPU, 5.2e-6 on the
/// emulator, 2026-12-06): a sum over the batch and the pixels that largely cancels (the
/// train-mode BatchNorms downstream remove most of a uniform shift), so its norm is small
/// beside the rounding of its terms.
const F32_TOLERANCES: Tolerances = Tolerances { features: 5e-6, loss: 1e-5, gradient: 2e-5 };

#[test]
fn the_cpu_reproduces_pytorchs_features_loss_gradients_and_running_statistics() {
    let r = reference();
    // f64 throughout: only the order of additions differs from PyTorch's. Measured
    // (2026-12-06): features 2.7e-16, loss 2.7e-16, worst gradient 1.9e-14 (the same bias),
    // running statistics 1.4e-16.
    let f64_tol = Tolerances { features: 1e-13, loss: 1e-13, gradient: 1e-12 };
    assert_reproduces(&r, DType::F64, Device::Cpu, f64_tol);
    assert_reproduces(&r, DType::F32, Device::Cpu, F32_TOLERANCES);
}

#[test]
fn the_emulated_gpu_reproduces_them_in_f32() {
    let r = reference();
    for device in model_devices() {
        assert_reproduces(&r, DType::F32, device, F32_TOLERANCES);
    }
}

#[test]
fn three_adamw_steps_give_pytorchs_losses() {
    let r = reference();
    let (model, mut params, mut buffers) = imported(DType::F64, Device::Cpu);
    // The script's groups: the shared weights at half the learning rate with weight decay 0.2,
    // other matrices and convs with 0.05, vectors and the logit scale with none.
    let groups = vec![
        ParamGroup { name: "shared".into(), weight_decay: 0.2, lr_scale: 0.5 },
        ParamGroup { name: "decay".into(), weight_decay: 0.05, lr_scale: 1.0 },
        ParamGroup { name: "no_decay".into(), weight_decay: 0.0, lr_scale: 1.0 },
    ];
    let shared = |name: &str| model.spec.params.iter().any(|p| p.name == name && p.role == Role::Shared);
    let config = AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-6 };
    let mut optimizer = AdamW::new(&params, config, groups, |name, t| match (shared(name), t.dims().len()) {
        (true, _) => 0,
        (false, 2..) => 1,
        (false, _) => 2,
    })
    .unwrap();
    for (step, want) in r.adamw_losses.iter().enumerate() {
        let (_, _, _, grads) = forward(&model, &params, &mut buffers, &r, DType::F64);
        optimizer.step(&mut params, None, &grads, Update::at(1e-3)).unwrap();
        let (_, _, loss, _) = forward(&model, &params, &mut buffers, &r, DType::F64);
        let what = format!("AdamW step {}", step + 1);
        eprintln!("{what}: loss off by {:.1e}", (loss - want).abs() / want);
        assert!((loss - want).abs() <= 1e-12 * want, "{what}: loss {loss} against PyTorch's {want}");
    }
}
