//! One training step of a whole model on the GPU backend against the CPU reference (DESIGN 8,
//! level 3): the same weights and batch give the same loss and the same gradient for every
//! parameter, on the emulator always and on a real GPU when present.

mod common;

use common::gpu::gpu_devices;
use msclip::autograd;
use msclip::data::shapes::{ShapesConfig, Split};
use msclip::model::{ClipModel, preset};
use msclip::text::Tokenizer;
use msclip::train::make_batch;
use msclip::{DType, Device, Rng};

/// ||a - b|| / ||b|| over all elements.
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm.max(1e-300)).sqrt()
}

#[test]
fn one_step_loss_and_every_gradient_match_the_cpu() {
    for name in ["tiny", "tiny-clip"] {
        let model = ClipModel::new(preset(name).unwrap()).unwrap();
        let (cpu_params, cpu_buffers) = model.init_params(&mut Rng::new(3), DType::F32).unwrap();
        let data = ShapesConfig::tiny();
        let corpus = msclip::data::shapes::caption_corpus(&data, 2000);
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), model.config.text.vocab).unwrap();
        let batch = make_batch(&data, Split::Train, 0, 12, &tokenizer, model.config.text.context, DType::F32).unwrap();

        let mut bufs = cpu_buffers.clone();
        let loss = model.contrastive_loss(&cpu_params, &mut bufs, &batch.images, &batch.tokens, None).unwrap();
        let cpu_loss = loss.item().unwrap();
        let cpu_grads = autograd::backward(&loss).unwrap();

        for device in gpu_devices() {
            let mut params = cpu_params.clone();
            params.to_device(device).unwrap();
            let mut bufs = cpu_buffers.clone();
            bufs.to_device(device).unwrap();
            let images = batch.images.to_device(device).unwrap();
            let loss = model.contrastive_loss(&params, &mut bufs, &images, &batch.tokens, None).unwrap();
            let gpu_loss = loss.item().unwrap();
            let grads = autograd::backward(&loss).unwrap();
            // Attention multiplies bf16-rounded tiles even for f32 tensors, so agreement is at
            // bf16's level (about 1e-3 relative), not f32's.
            assert!(
                (gpu_loss - cpu_loss).abs() <= 2e-3 * cpu_loss,
                "{name} on {device}: loss {gpu_loss} vs {cpu_loss}"
            );
            let mut worst = (0.0, String::new());
            for id in cpu_params.ids() {
                let pname = cpu_params.name(id);
                let want = cpu_grads.get(cpu_params.get(id)).map(|g| g.to_f64_vec());
                let got = grads.get(params.get(id)).map(|g| g.to_f64_vec());
                assert_eq!(want.is_some(), got.is_some(), "{name} on {device}: gradient presence of {pname}");
                let (Some(want), Some(got)) = (want, got) else { continue };
                let err = relative_error(&got, &want);
                if err > worst.0 {
                    worst = (err, pname.to_string());
                }
                assert!(err <= 6e-2, "{name} on {device}: gradient of {pname} off by {err:.2e} (relative norm)");
            }
            eprintln!(
                "{name} on {device}: loss {gpu_loss} vs {cpu_loss}; worst gradient {} at {:.2e}",
                worst.1, worst.0
            );
        }
    }
}

#[test]
fn model_tensors_stay_on_their_device() {
    let model = ClipModel::new(preset("tiny").unwrap()).unwrap();
    let (mut params, _) = model.init_params(&mut Rng::new(0), DType::F32).unwrap();
    params.to_device(Device::Emu).unwrap();
    assert!(params.ids().all(|id| params.get(id).device() == Device::Emu));
}
