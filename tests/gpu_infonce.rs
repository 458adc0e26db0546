//! InfoNCE kernels (kernels/infonce.cu) against the CPU reference: the loss, both log-sum-exp
//! vectors and all three gradients, for n in {1, 7, 33, 256, 1000}, ragged feature widths
//! (1, 3, 33, 64, 96), f32 (SIMT fp32) and bf16 (tensor cores), with the scale clamp inactive,
//! active, and absent.
//!
//! Tolerances `|got - want| <= atol + rtol |want|`: rtol is the dtype's (`rtol_of`); for the
//! gradients atol is a fraction of the largest reference magnitude (bf16 rounds dz before the
//! d features product), for the loss and lse a small absolute error of fp32 sums.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, rtol_of};
use msclip::backend::{self, InfoNceOut};
use msclip::{DType, Device, Rng, Tensor};

/// CLIP's initial temperature, ln(1 / 0.07) = 2.65926.
const LOG_SCALE_INIT: f64 = 2.659_26;
const MAX_SCALE: f64 = 100.0;

struct Case {
    n: usize,
    d: usize,
    log_scale: f64,
    max_scale: Option<f64>,
}

impl Case {
    fn new(n: usize, d: usize) -> Case {
        Case { n, d, log_scale: LOG_SCALE_INIT, max_scale: Some(MAX_SCALE) }
    }
}

/// [n, d] rows of unit norm (as the model's features are), representable in `dtype`.
fn unit_rows(rng: &mut Rng, n: usize, d: usize, dtype: DType) -> Tensor {
    let raw = rng.normal_tensor([n, d], 1.0, DType::F64).to_f64_vec();
    let rows: Vec<f64> = raw
        .chunks(d)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.iter().map(move |v| v / norm)
        })
        .collect();
    let t = Tensor::from_f64(&rows, [n, d], dtype).unwrap();
    t.to_dtype(DType::F32).unwrap()
}

/// A one-element f32 tensor holding `value` rounded to `dtype`.
fn scalar_as(value: f64, dtype: DType) -> Tensor {
    Tensor::from_f64(&[value], [1], dtype).unwrap().to_dtype(DType::F32).unwrap()
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn compare(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_close(what, &got.to_f64_vec(), &want.to_f64_vec(), atol, rtol);
}

/// Gradients: atol relative to the reference's largest magnitude.
fn compare_grad(what: &str, got: &Tensor, want: &Tensor, dtype: DType) {
    let scale = max_abs(&want.to_f64_vec()).max(1e-30);
    let atol = match dtype {
        DType::BF16 => scale / 128.0,
        _ => scale * 1e-5,
    };
    compare(what, got, want, atol, rtol_of(dtype));
}

fn check(case: &Case, seed: u64) {
    let cpu = backend::get(Device::Cpu);
    for dtype in [DType::F32, DType::BF16] {
        let mut rng = Rng::new(seed);
        let img = unit_rows(&mut rng, case.n, case.d, dtype);
        let txt = unit_rows(&mut rng, case.n, case.d, dtype);
        let (scale, dloss) = (scalar_as(case.log_scale, dtype), scalar_as(0.75, dtype));
        // The reference in f64: its n^2-term sums (d logit_scale) would carry f32 rounding of their own.
        let [img64, txt64, scale64, dloss64] = [&img, &txt, &scale, &dloss].map(|t| t.to_dtype(DType::F64).unwrap());
        let want = cpu.infonce(&img64, &txt64, &scale64, case.max_scale).unwrap();
        let (di, dt, ds) = cpu.infonce_backward(&img64, &txt64, &scale64, &want, &dloss64, case.max_scale).unwrap();
        for device in gpu_devices() {
            let name = format!(
                "{device} {dtype} n {} d {} log scale {} max {:?}",
                case.n, case.d, case.log_scale, case.max_scale
            );
            let be = backend::get(device);
            let [img_d, txt_d, scale_d, dloss_d] = [&img, &txt, &scale, &dloss].map(|t| on(t, device, dtype));
            let got = be.infonce(&img_d, &txt_d, &scale_d, case.max_scale).unwrap();
            // The loss is a mean of fp32 sums of lse values of size ~ln(n) + t.
            let loss_rtol = rtol_of(dtype).min(1.0 / 256.0);
            compare(&format!("{name}: loss"), &got.loss, &want.loss, 1e-5, loss_rtol);
            compare(&format!("{name}: row lse"), &got.row_lse, &want.row_lse, 1e-5, 2e-5);
            compare(&format!("{name}: col lse"), &got.col_lse, &want.col_lse, 1e-5, 2e-5);
            let out = InfoNceOut { loss: got.loss, row_lse: got.row_lse, col_lse: got.col_lse };
            let (gi, gt, gs) = be.infonce_backward(&img_d, &txt_d, &scale_d, &out, &dloss_d, case.max_scale).unwrap();
            compare_grad(&format!("{name}: d img"), &gi, &di, dtype);
            compare_grad(&format!("{name}: d txt"), &gt, &dt, dtype);
            // d logit_scale sums n^2 terms that largely cancel: atol scales with the terms (dloss / 2).
            compare(&format!("{name}: d logit_scale"), &gs, &ds, 1e-4, rtol_of(dtype));
        }
    }
}

#[test]
fn a_single_pair() {
    check(&Case::new(1, 64), 1);
}

#[test]
fn ragged_widths() {
    for (i, (n, d)) in [(7, 1), (7, 3), (33, 33), (7, 96)].into_iter().enumerate() {
        check(&Case::new(n, d), 10 + i as u64);
    }
}

#[test]
fn several_row_tiles() {
    check(&Case::new(256, 96), 2);
}

#[test]
fn a_thousand_pairs() {
    check(&Case::new(1000, 64), 3);
}

#[test]
fn the_clamp_freezes_the_scale() {
    // exp(5) = 148 > 100: the logits use 100 and the scale gets no gradient.
    let clamped = Case { log_scale: 5.0, ..Case::new(33, 64) };
    check(&clamped, 4);
    let unclamped = Case { max_scale: None, ..clamped };
    check(&unclamped, 5);
}

#[test]
fn backward_is_deterministic() {
    let mut rng = Rng::new(6);
    let (img, txt) = (unit_rows(&mut rng, 200, 96, DType::BF16), unit_rows(&mut rng, 200, 96, DType::BF16));
    for device in gpu_devices() {
        let be = backend::get(device);
        let [img, txt, scale, dloss] =
            [&img, &txt, &scalar_as(LOG_SCALE_INIT, DType::BF16), &scalar_as(1.0, DType::BF16)]
                .map(|t| on(t, device, DType::BF16));
        let out = be.infonce(&img, &txt, &scale, Some(MAX_SCALE)).unwrap();
        let run = || {
            let (a, b, c) = be.infonce_backward(&img, &txt, &scale, &out, &dloss, Some(MAX_SCALE)).unwrap();
            [a, b, c].map(|t| t.to_f64_vec())
        };
        assert_eq!(run(), run(), "{device}: two backward passes differ");
    }
}
