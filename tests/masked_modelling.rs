//! OneR's masked objectives (`--loss mlm`, `--loss mim`) on the CPU reference: gradients through
//! the whole model against finite differences in f64, and what the masks do to the inputs.

mod common;

use msclip::autograd;
use msclip::model::{ClipModel, LossContext, MaskDraw, MaskedInputs, Objectives};
use msclip::nn::ParamStore;
use msclip::train::{Masker, TrainConfig, make_batch};
use msclip::{DType, Rng, Tensor};

/// The central difference's step: f64 rounding and the curvature both stay below 1e-9.
const STEP: f64 = 1e-5;

struct Setup {
    model: ClipModel,
    config: TrainConfig,
    images: Tensor,
    tokens: Vec<u32>,
    draw: MaskDraw,
}

/// tiny-oner with its masked heads, a shapes-world batch of `n` in f64 and step 0's masks.
fn setup(n: usize) -> Setup {
    let mut config = TrainConfig::for_preset("tiny-oner").unwrap();
    config.objectives = Objectives::parse("itc,mlm,mim").unwrap();
    let model = ClipModel::new(config.model_config().unwrap()).unwrap();
    let corpus = msclip::data::shapes::caption_corpus(&config.data, 500);
    let tokenizer =
        msclip::text::Tokenizer::train_bpe(corpus.iter().map(String::as_str), model.config.text.vocab).unwrap();
    let split = msclip::data::shapes::Split::Train;
    let batch = make_batch(&config.data, split, 0, n, &tokenizer, &model.config, DType::F64).unwrap();
    let masker = Masker::new(&config, &model.config, &tokenizer).unwrap().unwrap();
    let draw = masker.draw(&batch.tokens, n, 0);
    Setup { model, config, images: batch.images, tokens: batch.tokens, draw }
}

#[test]
fn masked_losses_have_the_gradients_of_finite_differences() {
    let s = setup(3);
    let (p, bufs) = s.model.init_params(&mut Rng::new(2), DType::F64).unwrap();
    let masked = MaskedInputs::new(&s.tokens, &s.draw, s.model.mask_geometry(), None).unwrap();
    let captions = s.model.pack_captions(&s.tokens, None).unwrap();
    // The heads' own weights, the learned [MASK] and patch mask tokens, and weights both
    // objectives reach through the shared tower (the token table is also MLM's decoder).
    let names = [
        "mlm.mask_embedding",
        "mlm.dense.weight",
        "mlm.decoder_bias",
        "token_embedding.weight",
        "visual.mim.mask_token",
        "visual.mim.proj.weight",
        "visual.conv1.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
    ];
    let ids: Vec<_> = names.iter().map(|n| p.find(n).unwrap_or_else(|| panic!("no parameter {n}"))).collect();
    for (spec, objectives) in [("mlm", "itc=0.001,mlm"), ("mim", "itc=0.001,mim")] {
        let objectives = Objectives::parse(objectives).unwrap();
        // The total (the terms are detached for the log): the masked loss with a trace of ITC.
        let loss = |store: &ParamStore| {
            let terms = s.model.training_loss_terms(
                store,
                &mut bufs.clone(),
                &s.images,
                &captions,
                &objectives,
                LossContext { masked: Some(&masked), ..LossContext::default() },
            );
            terms.unwrap().total
        };
        let grads = autograd::backward(&loss(&p)).unwrap();
        for (&id, name) in ids.iter().zip(names) {
            // None: the loss does not reach it (MLM never reaches the patch mask token): zeros.
            let base = p.get(id).to_f64_vec();
            let analytic = grads.get(p.get(id)).map_or_else(|| vec![0.0; base.len()], |g| g.to_f64_vec());
            for i in (0..base.len()).step_by(base.len().div_ceil(5)) {
                let at = |delta: f64| {
                    let mut values = base.clone();
                    values[i] += delta;
                    let mut store = p.clone();
                    store.set(id, Tensor::from_f64(&values, p.get(id).dims().to_vec(), DType::F64).unwrap()).unwrap();
                    autograd::no_grad(|| loss(&store).item().unwrap())
                };
                let numeric = (at(STEP) - at(-STEP)) / (2.0 * STEP);
                let a = analytic[i];
                assert!(
                    (a - numeric).abs() <= 1e-6 * a.abs().max(numeric.abs()).max(1e-3),
                    "{spec}: {name}[{i}]: analytic {a}, numeric {numeric}"
                );
            }
        }
    }
}

#[test]
fn a_masked_patch_is_invisible_to_the_predictions_and_the_others_are_not() {
    let s = setup(2);
    let (p, mut bufs) = s.model.init_params(&mut Rng::new(4), DType::F64).unwrap();
    let masked = MaskedInputs::new(&s.tokens, &s.draw, s.model.mask_geometry(), None).unwrap();
    let objectives = Objectives::parse("itc,mim").unwrap();
    let captions = s.model.pack_captions(&s.tokens, None).unwrap();
    let mim = |images: &Tensor, bufs: &mut msclip::model::Buffers| {
        let context = LossContext { masked: Some(&masked), ..LossContext::default() };
        let terms = s.model.training_loss_terms(&p, bufs, images, &captions, &objectives, context).unwrap();
        terms.terms.iter().find(|(name, _)| *name == "mim").unwrap().1.item().unwrap()
    };
    let base = mim(&s.images, &mut bufs);
    // Every masked patch's pixels shifted by 1: the predictions cannot see them (the inputs are
    // the mask token), so the error moves by exactly what the targets moved.
    let grid = s.model.config.vision.grid();
    let patch = s.model.config.vision.image_size / grid;
    let patches = s.draw.patches.as_ref().unwrap();
    let size = s.model.config.vision.image_size;
    let pixels = s.images.to_f64_vec();
    let mut shift = vec![0.0; pixels.len()];
    for (b, image) in patches.patches.chunks(patches.per_image).enumerate() {
        for &k in image {
            let (gy, gx) = (k as usize / grid, k as usize % grid);
            for c in 0..3 {
                for y in gy * patch..(gy + 1) * patch {
                    for x in gx * patch..(gx + 1) * patch {
                        shift[((b * 3 + c) * size + y) * size + x] = 1.0;
                    }
                }
            }
        }
    }
    // mean((e - d)^2) + mean((e + d)^2) = 2 mean(e^2) + 2 d^2 for every error vector e exactly
    // when the predictions do not move with the masked pixels and the targets move by d.
    let moved = |d: f64| {
        let values: Vec<f64> = pixels.iter().zip(&shift).map(|(v, s)| v + d * s).collect();
        mim(&Tensor::from_f64(&values, s.images.dims().to_vec(), DType::F64).unwrap(), &mut bufs.clone())
    };
    let identity = moved(1.0) + moved(-1.0) - 2.0 * base;
    assert!((identity - 2.0).abs() < 1e-9, "the predictions saw the masked pixels: {identity} against 2");
    // An unmasked patch's pixels do reach the predictions.
    let mut other = s.images.to_f64_vec();
    let unmasked = (0..grid * grid).find(|k| !patches.patches[..patches.per_image].contains(&(*k as u32))).unwrap();
    let (gy, gx) = (unmasked / grid, unmasked % grid);
    other[(gy * patch) * size + gx * patch] += 1.0;
    let other = Tensor::from_f64(&other, s.images.dims().to_vec(), DType::F64).unwrap();
    assert!((mim(&other, &mut bufs) - base).abs() > 1e-9, "an unmasked patch's pixels changed nothing");
}

#[test]
fn the_masked_objectives_train_with_the_run() {
    let s = setup(2);
    let err = Objectives::parse("mlm").unwrap_err().to_string();
    assert!(err.contains("beside a contrastive objective"), "{err}");
    let mut config = s.config.clone();
    config.mlm_ratio = 1.5;
    assert!(config.validate().unwrap_err().to_string().contains("--mlm-ratio"));
}
