//! One training step of each B-scale preset, whole (twelve layers, 224 px images, the full
//! vocabulary and context), on the GPU backend against the CPU reference (DESIGN 8, level 3, at
//! the scale users train): the loss and the gradient of every parameter. About 20 s a preset on
//! the emulator (a minute for msclip-s-b16's 14x14 grid), 4 GiB each, so the tests take turns.
//!
//! Batch 2, random images and caption rows of two lengths (one cut before its EOT); the
//! reference is f64 from the same f32 weights, as in tests/gpu_model.rs.

mod common;

use std::sync::Mutex;

use common::gpu::model_devices;
use common::{assert_gradients_match_by, buffers_as, captions_ending_at};
use msclip::autograd;
use msclip::model::{ClipModel, preset};
use msclip::{DType, Rng};

/// |loss - reference| / reference: measured at most 3.5e-7 (clip-b32).
const LOSS_RTOL: f64 = 1e-6;
/// ||grad - reference|| / ||reference|| of a transformer, embedding or projection parameter:
/// measured at most 8.8e-5 (oner-b32's logit scale); most are under 2e-5.
const GRAD_RTOL: f64 = 1.5e-4;
/// The same for the batch-normalised convolutions of the conv stem and the parallel branch.
/// Their gradients come back through twelve layers and then cancel in each batch norm's
/// backward (a sum over batch x 112 x 112 positions of terms whose mean it removes), so f32
/// loses digits there whatever the order: against the f64 reference the CPU backend in f32 is
/// off by up to 8.1e-3 (msclip-s-b32's branch; 7.9e-3 on msclip-s-b16's), the emulator by up to
/// 6.0e-3 (2026-12-04). A wrong index or a missing term shows as an error of order one.
const CONV_GRAD_RTOL: f64 = 1e-2;

/// One whole model's step at a time: each holds about 4 GiB (the f64 reference's activations
/// and the emulator's device memory), and CI machines are small.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_step_matches_the_cpu(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let model = ClipModel::new(preset(name).unwrap()).unwrap();
    let (cpu_params, cpu_buffers) = model.init_params(&mut Rng::new(7), DType::F32).unwrap();
    let mut rng = Rng::new(11);
    let size = model.config.vision.image_size;
    let images = rng.normal_tensor(vec![2, 3, size, size], 1.0, DType::F32);
    let (context, vocab) = (model.config.text.context, model.config.text.vocab);
    let tokens = captions_ending_at(&mut rng, &[context - 1, 0], context, vocab);

    let params64 = cpu_params.cast_for_compute(DType::F64, |_| false).unwrap();
    let mut bufs64 = buffers_as(&cpu_buffers, DType::F64);
    let loss = model.contrastive_loss(&params64, &mut bufs64, &images.to_dtype(DType::F64).unwrap(), &tokens, None);
    let loss = loss.unwrap();
    let cpu_loss = loss.item().unwrap();
    let cpu_grads = autograd::backward(&loss).unwrap();
    drop(loss);

    for device in model_devices() {
        let mut params = cpu_params.clone();
        params.to_device(device).unwrap();
        let mut bufs = cpu_buffers.clone();
        bufs.to_device(device).unwrap();
        let loss = model.contrastive_loss(&params, &mut bufs, &images.to_device(device).unwrap(), &tokens, None);
        let loss = loss.unwrap();
        let gpu_loss = loss.item().unwrap();
        let grads = autograd::backward(&loss).unwrap();
        let what = format!("{name} on {device}");
        let loss_err = (gpu_loss - cpu_loss).abs() / cpu_loss;
        assert!(loss_err <= LOSS_RTOL, "{what}: loss {gpu_loss} vs {cpu_loss} (f64)");
        let rtol_of = |param: &str| {
            let batch_normed_conv = param.starts_with("visual.stem.") || param.starts_with("visual.branch.stages.");
            if batch_normed_conv { CONV_GRAD_RTOL } else { GRAD_RTOL }
        };
        let worst = assert_gradients_match_by(&what, (&cpu_params, &cpu_grads), (&params, &grads), rtol_of);
        eprintln!("{what}: loss off by {loss_err:.1e}; worst gradient {} at {:.2e}", worst.1, worst.0);
    }
}

#[test]
fn clip_b32_step_matches_the_cpu() {
    one_step_matches_the_cpu("clip-b32");
}

#[test]
fn msclip_s_b32_step_matches_the_cpu() {
    one_step_matches_the_cpu("msclip-s-b32");
}

#[test]
fn msclip_s_b16_step_matches_the_cpu() {
    one_step_matches_the_cpu("msclip-s-b16");
}

#[test]
fn oner_b32_step_matches_the_cpu() {
    one_step_matches_the_cpu("oner-b32");
}
