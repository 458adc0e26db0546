//! Modality-fused execution of the shared layers against the two-pass baseline: the same loss,
//! every parameter's gradient and the same BatchNorm statistics, on the CPU in f64 and on the
//! GPU backend in f32, for every preset that shares layers (MS-CLIP plain, with early
//! specialisation, with the parallel branch, and the single tower), at a small batch of
//! captions of different lengths. On the GPU backend, fused also launches fewer kernels.

mod common;

use common::gpu::model_devices;
use common::{assert_gradients_match, captions_ending_at, relative_error};
use msclip::autograd::{self, Gradients};
use msclip::backend::gpu::counters::measure;
use msclip::model::{Buffers, ClipModel, ModalityFusion, ModelConfig, Sharing, preset};
use msclip::nn::ParamStore;
use msclip::{DType, Device, Rng, Tensor};

/// tiny-msclip: every layer shared; tiny: conv stem and an unshared first text layer;
/// tiny-msclip-s: those and the parallel branch fused in before layers 2 and 3; tiny-oner: one
/// tower, LayerNorms and head included.
const PRESETS: [&str; 4] = ["tiny-msclip", "tiny", "tiny-msclip-s", "tiny-oner"];

/// Relative bounds (loss, and the norm of each gradient's difference against its norm) of fused
/// against two-pass. The forward is the same row by row (each row's products, LayerNorm and
/// attention do not depend on the rows beside it), so the losses agree exactly; the weight
/// gradients sum over both modalities' rows in one product instead of two added, which moves
/// them by rounding: measured at most 5e-16 in f64 and 7.5e-7 in f32 on the emulator.
const F64_RTOL: f64 = 1e-13;
const F32_LOSS_RTOL: f64 = 1e-6;
const F32_GRAD_RTOL: f64 = 1e-5;

/// Three pairs, the captions pooled at tokens 5, 31 (the whole context) and 0 (one token).
const CAPTION_ENDS: [usize; 3] = [5, 31, 0];

/// One training forward and backward of `preset` run as `fusion`: the loss, the gradients and
/// the BatchNorm statistics it leaves.
struct Run {
    loss: f64,
    grads: Gradients,
    buffers: Buffers,
}

fn run(config: &ModelConfig, fusion: ModalityFusion, inputs: (&ParamStore, &Buffers), batch: (&Tensor, &[u32])) -> Run {
    let model = ClipModel::new(config.clone()).unwrap().with_fusion(fusion);
    let mut buffers = inputs.1.clone();
    let loss = model.contrastive_loss(inputs.0, &mut buffers, batch.0, batch.1, None).unwrap();
    Run { loss: loss.item().unwrap(), grads: autograd::backward(&loss).unwrap(), buffers }
}

/// Fused against two-pass on `device` in `dtype`; returns the worst gradient error and its name.
fn compare(config: &ModelConfig, device: Device, dtype: DType, (loss_rtol, grad_rtol): (f64, f64)) -> (f64, String) {
    let model = ClipModel::new(config.clone()).unwrap();
    let name = &config.name;
    assert_eq!(model.fusion(), ModalityFusion::Fused, "{name} shares layers: fused by default");
    let c = &model.config;
    let mut rng = Rng::new(21);
    let (mut params, mut buffers) = model.init_params(&mut rng, dtype).unwrap();
    params.to_device(device).unwrap();
    buffers.to_device(device).unwrap();
    let size = c.vision.image_size;
    let images = rng.normal_tensor([CAPTION_ENDS.len(), 3, size, size], 1.0, dtype).to_device(device).unwrap();
    let tokens = captions_ending_at(&mut rng, &CAPTION_ENDS, c.text.context, c.text.vocab);

    let inputs = (&params, &buffers);
    let fused = run(config, ModalityFusion::Fused, inputs, (&images, &tokens));
    let two_pass = run(config, ModalityFusion::TwoPass, inputs, (&images, &tokens));
    let what = format!("{name} ({} layers) on {device} in {dtype}", c.vision.layers);
    let loss_err = (fused.loss - two_pass.loss).abs() / two_pass.loss.abs();
    assert!(loss_err <= loss_rtol, "{what}: loss {} fused, {} two-pass", fused.loss, two_pass.loss);
    let worst = assert_gradients_match(&what, (&params, &two_pass.grads), (&params, &fused.grads), grad_rtol);
    for ((name, got), (_, want)) in fused.buffers.iter().zip(two_pass.buffers.iter()) {
        let err = relative_error(&got.to_f64_vec(), &want.to_f64_vec());
        assert!(err <= grad_rtol, "{what}: BatchNorm statistic {name} off by {err:.2e}");
    }
    eprintln!("{what}: loss off by {loss_err:.1e}; worst gradient {} at {:.2e}", worst.1, worst.0);
    worst
}

#[test]
fn fused_matches_two_pass_on_the_cpu_in_f64() {
    for name in PRESETS {
        compare(&preset(name).unwrap(), Device::Cpu, DType::F64, (F64_RTOL, F64_RTOL));
    }
}

#[test]
fn fused_matches_two_pass_on_the_gpu_backend_in_f32() {
    for device in model_devices() {
        for name in PRESETS {
            compare(&preset(name).unwrap(), device, DType::F32, (F32_LOSS_RTOL, F32_GRAD_RTOL));
        }
    }
}

#[test]
fn branch_stages_fused_before_one_block_all_train() {
    // tiny-msclip-s cut to two layers (`--layers 2`): both parallel-branch stages fuse in before
    // its one shared block, one after the other, on either path.
    let config = preset("tiny-msclip-s").unwrap().with_depth(2).unwrap();
    assert_eq!(config.vision.parallel_branch.as_ref().unwrap().lateral_layers, [1, 1]);
    for (device, dtype, rtol) in
        [(Device::Cpu, DType::F64, (F64_RTOL, F64_RTOL)), (Device::Emu, DType::F32, (F32_LOSS_RTOL, F32_GRAD_RTOL))]
    {
        compare(&config, device, dtype, rtol);
    }
    // Both stages did work: every branch parameter gets a gradient.
    let model = ClipModel::new(config.clone()).unwrap();
    let mut rng = Rng::new(23);
    let (params, mut buffers) = model.init_params(&mut rng, DType::F64).unwrap();
    let size = config.vision.image_size;
    let images = rng.normal_tensor([2, 3, size, size], 1.0, DType::F64);
    let tokens = captions_ending_at(&mut rng, &[4, 9], config.text.context, config.text.vocab);
    let loss = model.contrastive_loss(&params, &mut buffers, &images, &tokens, None).unwrap();
    let grads = autograd::backward(&loss).unwrap();
    let branch: Vec<_> = params.ids().filter(|&id| params.name(id).starts_with("visual.branch.")).collect();
    assert!(branch.iter().any(|&id| params.name(id).contains("stages.1.")), "the second stage has parameters");
    for id in branch {
        let grad = grads.get(params.get(id)).unwrap_or_else(|| panic!("no gradient for {}", params.name(id)));
        assert!(grad.to_f64_vec().iter().any(|g| *g != 0.0), "zero gradient for {}", params.name(id));
    }
}

#[test]
fn fused_launches_fewer_kernels_and_gemms() {
    let model = ClipModel::new(preset("tiny-msclip").unwrap()).unwrap();
    let c = &model.config;
    let mut rng = Rng::new(22);
    let (mut params, mut buffers) = model.init_params(&mut rng, DType::F32).unwrap();
    params.to_device(Device::Emu).unwrap();
    buffers.to_device(Device::Emu).unwrap();
    let size = c.vision.image_size;
    let images = rng.normal_tensor([2, 3, size, size], 1.0, DType::F32).to_device(Device::Emu).unwrap();
    let tokens = captions_ending_at(&mut rng, &[7, 3], c.text.context, c.text.vocab);
    let counts = |fusion| measure(|| run(&model.config, fusion, (&params, &buffers), (&images, &tokens))).1;
    let (fused, two_pass) = (counts(ModalityFusion::Fused), counts(ModalityFusion::TwoPass));
    // Every product of a shared layer runs once instead of once per modality: 4 forward, 8
    // backward (d input and d weight of each). The LayerNorm, attention, activation and residual
    // kernels run once too (at least 10 launches fewer per layer, forward and backward), less the
    // joins and splits of the rows at the ends.
    let layers = c.text.layers as u64;
    assert_eq!(two_pass.gemms() - fused.gemms(), 12 * layers, "{} vs {} GEMMs", fused.gemms(), two_pass.gemms());
    assert!(fused.launches() + 10 * layers <= two_pass.launches(), "{} vs {}", fused.launches(), two_pass.launches());
    eprintln!(
        "tiny-msclip forward + backward: {} launches and {} GEMMs fused, {} and {} two-pass",
        fused.launches(),
        fused.gemms(),
        two_pass.launches(),
        two_pass.gemms()
    );
}

#[test]
fn clip_runs_two_pass_by_default() {
    let config = preset("tiny-clip").unwrap();
    assert_eq!(config.sharing, Sharing::None);
    assert_eq!(ClipModel::new(config).unwrap().fusion(), ModalityFusion::TwoPass);
}
