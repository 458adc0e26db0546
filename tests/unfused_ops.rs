//! The unfused compositions `msclip bench step --unfused` runs (ops::fusion) against the fused
//! ops: the same values and input gradients, op by op on ragged shapes (CPU in f64, the
//! emulator in f32), and a whole model's loss, gradients and counted FLOPs with every fusion
//! off at once.

mod common;

use common::gpu::{model_devices, on, randn_as};
use common::{assert_close, assert_gradients_match, captions_ending_at, rand_range, randn, relative_error};
use msclip::autograd::{self, Gradients};
use msclip::backend::ContrastWeights;
use msclip::backend::{Activation, AttnMask, SegmentMask};
use msclip::model::{ClipModel, preset};
use msclip::ops::flops;
use msclip::ops::fusion::{Fusion, is_off, unfused};
use msclip::ops::{BatchNormMode, attention, batch_norm_relu2d, contrast, infonce};
use msclip::{DType, Result, Rng, Tensor};

/// f64 compositions differ from the fused kernels by summation order only.
const F64_TOL: f64 = 1e-12;
/// f32 on the emulator: the fused kernels keep running sums the compositions do not.
const F32_TOL: f64 = 2e-5;

/// The value of `f` on leaves made from `inputs` and the gradient of `sum(f * w)` for each
/// input, with the fusion on and off. The unfused run must record more ops than the fused one
/// (proof that it ran the composition).
fn both_ways(
    fusion: Fusion,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> [(Vec<f64>, Vec<Vec<f64>>); 2] {
    let run = || {
        let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let recorded_before = autograd::tape_len();
        let out = f(&leaves).unwrap();
        let recorded = autograd::tape_len() - recorded_before;
        let dtype = out.dtype();
        let weights = randn(&mut Rng::new(3), out.dims()).to_dtype(dtype).unwrap().to_device(out.device()).unwrap();
        let grads: Gradients = autograd::backward(&out.mul(&weights).unwrap().sum_all().unwrap()).unwrap();
        let input_grads =
            leaves.iter().map(|l| grads.get(l).expect("every input has a gradient").to_f64_vec()).collect();
        (out.to_f64_vec(), input_grads, recorded)
    };
    let fused = run();
    let composed = unfused(&[fusion], || {
        assert!(is_off(fusion));
        run()
    });
    assert!(!is_off(fusion), "the fusion is back on after the scope");
    assert!(composed.2 > fused.2, "{fusion:?}: {} ops recorded unfused, {} fused", composed.2, fused.2);
    [(fused.0, fused.1), (composed.0, composed.1)]
}

/// Fused against unfused within `tol` (absolute plus relative) for values and every gradient.
fn assert_same(what: &str, [fused, composed]: [(Vec<f64>, Vec<Vec<f64>>); 2], tol: f64) {
    assert_close(&format!("{what}: value"), &composed.0, &fused.0, tol, tol);
    for (k, (c, f)) in composed.1.iter().zip(&fused.1).enumerate() {
        assert_close(&format!("{what}: gradient of input {k}"), c, f, tol, tol);
    }
}

/// The masks of a shared layer and of each tower: ragged packed captions (one of a single
/// token) after full-attention images, all causal, and padded keys in a batch; OneR's joint
/// sequences under segment masks.
fn masks() -> Vec<(&'static str, usize, usize, AttnMask)> {
    vec![
        (
            "images then packed captions",
            1,
            2 * 5 + 7 + 1 + 3,
            AttnMask::packed_causal_after(vec![0, 5, 10, 17, 18, 21], 2),
        ),
        ("packed causal captions", 1, 13, AttnMask::packed(vec![0, 6, 7, 13], true)),
        ("batch with padded keys", 3, 6, AttnMask::key_padding(vec![6, 2, 4])),
        ("batch, causal", 2, 5, AttnMask::causal()),
        ("batch, full", 2, 4, AttnMask::none()),
        (
            "joint pairs, cross segments",
            1,
            9 + 11,
            AttnMask { segments: Some(SegmentMask::cross(4)), ..AttnMask::packed(vec![0, 9, 20], false) },
        ),
        (
            "batch, block-diagonal segments",
            2,
            7,
            AttnMask { segments: Some(SegmentMask::block_diagonal(3)), ..AttnMask::key_padding(vec![7, 5]) },
        ),
    ]
}

#[test]
fn unfused_attention_matches_the_fused_kernels_on_ragged_masks() {
    let heads = 2;
    let width = 8;
    for (what, batch, len, mask) in masks() {
        let mut rng = Rng::new(7);
        let qkv = randn(&mut rng, &[batch, len, 3 * width]);
        let f = |x: &[Tensor]| attention(&x[0], heads, &mask);
        assert_same(&format!("cpu f64, {what}"), both_ways(Fusion::Attention, std::slice::from_ref(&qkv), f), F64_TOL);
        for device in model_devices() {
            let qkv = on(&randn_as(&mut rng, &[batch, len, 3 * width], 1.0, DType::F32), device, DType::F32);
            assert_same(&format!("{device} f32, {what}"), both_ways(Fusion::Attention, &[qkv], f), F32_TOL);
        }
    }
}

/// The fused and unfused InfoNCE agree in f64 on the CPU and in f32 on every GPU device.
fn infonce_both_ways(what: &str, inputs: [&Tensor; 3], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let inputs = inputs.map(Tensor::clone);
    assert_same(&format!("cpu f64, {what}"), both_ways(Fusion::InfoNce, &inputs, &f), F64_TOL);
    for device in model_devices() {
        let inputs: Vec<Tensor> = inputs.iter().map(|t| on(t, device, DType::F32)).collect();
        assert_same(&format!("{device} f32, {what}"), both_ways(Fusion::InfoNce, &inputs, &f), F32_TOL);
    }
}

#[test]
fn unfused_infonce_matches_the_fused_loss_with_the_clamp_off_active_and_inactive() {
    let mut rng = Rng::new(11);
    let (n, d) = (5, 6);
    let features = |rng: &mut Rng| randn(rng, &[n, d]).l2_normalize(1e-12).unwrap().detach();
    let (img, txt) = (features(&mut rng), features(&mut rng));
    let scale = Tensor::from_f64(&[2.0], [1], DType::F64).unwrap();
    // exp(2) = 7.39: a max of 100 leaves it alone, a max of 5 clamps it (no scale gradient).
    for max_scale in [None, Some(100.0), Some(5.0)] {
        let f = |x: &[Tensor]| infonce(&x[0], &x[1], &x[2], max_scale);
        infonce_both_ways(&format!("max {max_scale:?}"), [&img, &txt, &scale], f);
    }
}

#[test]
fn unfused_contrast_matches_the_fused_loss_in_one_direction_and_with_unequal_weights() {
    let mut rng = Rng::new(12);
    let (n, d) = (6, 5);
    let features = |rng: &mut Rng| randn(rng, &[n, d]).l2_normalize(1e-12).unwrap().detach();
    let (img, txt) = (features(&mut rng), features(&mut rng));
    let scale = Tensor::from_f64(&[2.0], [1], DType::F64).unwrap();
    for weights in [
        ContrastWeights::ROWS,
        ContrastWeights { rows: 0.0, columns: 1.0 },
        ContrastWeights { rows: 0.8, columns: 0.4 },
    ] {
        let f = |x: &[Tensor]| contrast(&x[0], &x[1], &x[2], Some(100.0), weights);
        infonce_both_ways(&format!("{weights:?}"), [&img, &txt, &scale], f);
    }
}

#[test]
fn unfused_residual_layer_norm_and_bias_gelu_match_the_fused_kernels() {
    let mut rng = Rng::new(5);
    let (rows, width) = (7, 12);
    let x = randn(&mut rng, &[rows, width]);
    let residual = randn(&mut rng, &[rows, width]);
    let gamma = randn(&mut rng, &[width]);
    let beta = randn(&mut rng, &[width]);
    // Both outputs of the fused op (the sum goes on down the residual stream).
    let add_ln = |x: &[Tensor]| -> Result<Tensor> {
        let (sum, y) = x[0].add_layer_norm(&x[1], &x[2], &x[3], 1e-5)?;
        msclip::ops::concat(&[&sum, &y], 0)
    };
    let bias_quick_gelu = |x: &[Tensor]| x[0].bias_activation(&x[1], Activation::QuickGelu);
    let bias_gelu = |x: &[Tensor]| x[0].bias_activation(&x[1], Activation::Gelu);
    let ln_inputs = [x.clone(), residual, gamma, beta.clone()];
    let gelu_inputs = [x, beta];
    type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;
    let cases: [(&str, Fusion, &[Tensor], Op); 3] = [
        ("add_layer_norm", Fusion::ResidualLayerNorm, &ln_inputs, &add_ln),
        ("bias_quick_gelu", Fusion::BiasGelu, &gelu_inputs, &bias_quick_gelu),
        ("bias_gelu", Fusion::BiasGelu, &gelu_inputs, &bias_gelu),
    ];
    for (op, fusion, inputs, f) in cases {
        assert_same(&format!("cpu f64, {op}"), both_ways(fusion, inputs, f), F64_TOL);
        for device in model_devices() {
            let inputs: Vec<Tensor> = inputs.iter().map(|t| on(t, device, DType::F32)).collect();
            assert_same(&format!("{device} f32, {op}"), both_ways(fusion, &inputs, f), F32_TOL);
        }
    }
}

/// BatchNorm with the ReLU in its kernels against BatchNorm then ReLU, in training (batch
/// statistics) and evaluation (given statistics). The input's mean is far from zero and beta
/// mixed in sign, so the ReLU cuts part of every channel.
#[test]
fn unfused_batch_norm_relu_matches_the_fused_kernels() {
    let mut rng = Rng::new(6);
    let shape = [3, 4, 5, 3];
    let x = rand_range(&mut rng, &shape, -1.0, 2.5);
    let (gamma, beta) = (randn(&mut rng, &[4]), randn(&mut rng, &[4]));
    let (mean, var) = (randn(&mut rng, &[4]), rand_range(&mut rng, &[4], 0.5, 2.0));
    let inputs = [x, gamma, beta];
    for train in [true, false] {
        let f = |t: &[Tensor]| -> Result<Tensor> {
            let like_x = |s: &Tensor| s.to_dtype(t[0].dtype())?.to_device(t[0].device());
            let (mean, var) = (like_x(&mean)?, like_x(&var)?);
            let mode = if train { BatchNormMode::Train } else { BatchNormMode::Eval { mean: &mean, var: &var } };
            Ok(batch_norm_relu2d(&t[0], &t[1], &t[2], 1e-5, mode)?.0)
        };
        let op = if train { "batch_norm_relu2d train" } else { "batch_norm_relu2d eval" };
        assert_same(&format!("cpu f64, {op}"), both_ways(Fusion::BatchNormRelu, &inputs, f), F64_TOL);
        for device in model_devices() {
            let inputs: Vec<Tensor> = inputs.iter().map(|t| on(t, device, DType::F32)).collect();
            assert_same(&format!("{device} f32, {op}"), both_ways(Fusion::BatchNormRelu, &inputs, f), F32_TOL);
        }
    }
}

/// tiny-msclip-s (shared layers fused over both modalities, a conv stem, the parallel branch)
/// with every op fusion off: the same loss and every parameter's gradient as fused, in f64 on
/// the CPU, and the same counted FLOPs, which are the model's whatever runs them.
#[test]
fn a_model_with_every_fusion_off_has_the_loss_gradients_and_flops_of_the_fused_one() {
    let model = ClipModel::new(preset("tiny-msclip-s").unwrap()).unwrap();
    let c = &model.config;
    let mut rng = Rng::new(21);
    let (params, buffers) = model.init_params(&mut rng, DType::F64).unwrap();
    let size = c.vision.image_size;
    let images = rng.normal_tensor([3, 3, size, size], 1.0, DType::F64);
    let tokens = captions_ending_at(&mut rng, &[5, c.text.context - 1, 0], c.text.context, c.text.vocab);
    let run = || {
        let mut buffers = buffers.clone();
        let recorded_before = autograd::tape_len();
        let (loss, counted) =
            flops::count(|| model.contrastive_loss(&params, &mut buffers, &images, &tokens, None).unwrap());
        let recorded = autograd::tape_len() - recorded_before;
        (loss.item().unwrap(), autograd::backward(&loss).unwrap(), counted, recorded)
    };
    let (loss, grads, counted, recorded) = run();
    let (unfused_loss, unfused_grads, unfused_counted, unfused_recorded) = unfused(&Fusion::ALL, run);
    assert!(unfused_recorded > recorded, "{unfused_recorded} ops recorded unfused, {recorded} fused");
    assert!(relative_error(&[unfused_loss], &[loss]) <= F64_TOL, "loss {unfused_loss} unfused, {loss} fused");
    let worst = assert_gradients_match("tiny-msclip-s unfused", (&params, &grads), (&params, &unfused_grads), 1e-10);
    assert_eq!(unfused_counted, counted, "FLOPs are counted as the model's either way");
    eprintln!(
        "every fusion off: loss off by {:.1e}, worst gradient {} at {:.1e}",
        (unfused_loss - loss).abs(),
        worst.1,
        worst.0
    );
}
