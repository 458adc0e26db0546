//! BatchNorm (kernels/batchnorm.cu), alone and with the ReLU after it fused in, against the CPU
//! reference in f32 and bf16: training and evaluation forwards, and the backward with batch or
//! given statistics, on ragged shapes whose reductions split into one or several chunks.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as, rtol_of};
use msclip::backend::{self, Backend, BatchNormOut};
use msclip::{DType, Device, Rng, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];
const EPS: f64 = 1e-5;

/// Planes of odd sizes (read an element at a time), of 64 (16-byte packs in f32 and bf16), of
/// 10 (8-byte packs in f32 only) and of 2900 (8-byte packs). 3 * 61 * 57 = 10431 and 3 * 58 * 50
/// = 8700 elements per channel make two chunks of the reductions (src/backend/gpu/batchnorm.rs),
/// the boundary inside the second sample's plane; the second's chunk rounds up to whole packs.
const SHAPES: [[usize; 4]; 8] = [
    [2, 3, 7, 5],
    [1, 1, 13, 13],
    [3, 5, 1, 1],
    [4, 5, 3, 3],
    [2, 3, 8, 8],
    [2, 2, 5, 2],
    [3, 2, 61, 57],
    [3, 2, 58, 50],
];

fn cpu() -> &'static dyn Backend {
    backend::get(Device::Cpu)
}

/// `got` against the f32 CPU reference, with an absolute tolerance scaled to the largest
/// reference value: d gamma and d beta are sums over a channel, whose error follows the terms.
fn check(what: &str, got: &Tensor, want: &Tensor, dtype: DType) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let want = want.to_f64_vec();
    let rtol = rtol_of(dtype);
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    assert_close(what, &got.to_f64_vec(), &want, rtol * scale, rtol);
}

/// N(0.7, 1.5^2) values exactly representable in `dtype`: a mean far from zero, so a kernel
/// that skips the mean subtraction fails.
fn shifted(rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
    let data: Vec<f64> = randn_as(rng, shape, 1.5, DType::F32).to_f64_vec().iter().map(|v| v + 0.7).collect();
    Tensor::from_f64(&data, shape.to_vec(), dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// The CPU inputs of one case: x, gamma, beta (random signs, so a fused ReLU cuts part of the
/// output, checked on shapes large enough) and an upstream gradient.
struct Case {
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    dy: Tensor,
}

impl Case {
    fn new(seed: u64, shape: &[usize; 4], dtype: DType) -> Self {
        let mut rng = Rng::new(seed);
        let c = shape[1];
        let x = shifted(&mut rng, shape, dtype);
        let gamma = randn_as(&mut rng, &[c], 1.0, dtype);
        let beta = randn_as(&mut rng, &[c], 1.0, dtype);
        let dy = randn_as(&mut rng, shape, 1.0, dtype);
        Case { x, gamma, beta, dy }
    }
}

/// The fraction of `y`'s elements a ReLU cut to zero.
fn cut_fraction(y: &Tensor) -> f64 {
    let values = y.to_f64_vec();
    values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len().max(1) as f64
}

#[test]
fn batch_norm_with_and_without_a_fused_relu_matches_the_cpu() {
    for device in gpu_devices() {
        let gpu = backend::get(device);
        for (i, shape) in SHAPES.iter().enumerate() {
            for dtype in DTYPES {
                let Case { x, gamma, beta, dy } = Case::new(200 + i as u64, shape, dtype);
                let dev = |t: &Tensor| on(t, device, dtype);
                for relu in [false, true] {
                    let what = |name: &str| format!("{device} {dtype} {shape:?} relu {relu}: {name}");
                    let want = cpu().batch_norm_train(&x, &gamma, &beta, EPS, relu).unwrap();
                    let got = gpu.batch_norm_train(&dev(&x), &dev(&gamma), &dev(&beta), EPS, relu).unwrap();
                    check(&what("train y"), &got.y, &want.y, dtype);
                    check(&what("train mean"), &got.mean, &want.mean, dtype);
                    check(&what("train var"), &got.var, &want.var, dtype);
                    check(&what("train affine"), &got.affine, &want.affine, DType::F32);
                    if relu && shape[0] * shape[2] * shape[3] > 4 {
                        let cut = cut_fraction(&want.y);
                        assert!(cut > 0.0 && cut < 1.0, "{}: the ReLU cut {cut} of y", what("train"));
                    }

                    // Eval and backward take the statistics as the device stores them, on both sides.
                    let stored = |t: &Tensor| on(t, Device::Cpu, dtype).to_dtype(DType::F32).unwrap();
                    let (mean, var) = (stored(&want.mean), stored(&want.var));
                    let want_eval = cpu().batch_norm_eval(&x, &gamma, &beta, &mean, &var, EPS, relu).unwrap();
                    let got_eval =
                        gpu.batch_norm_eval(&dev(&x), &dev(&gamma), &dev(&beta), &dev(&mean), &dev(&var), EPS, relu);
                    let got_eval = got_eval.unwrap();
                    check(&what("eval y"), &got_eval.y, &want_eval.y, dtype);
                    check(&what("eval affine"), &got_eval.affine, &want_eval.affine, DType::F32);

                    for (batch_stats, want_fwd, got_fwd) in [(true, &want, &got), (false, &want_eval, &got_eval)] {
                        let want_grads = backward(cpu(), [&x, &gamma, &mean, &var, &dy], want_fwd, batch_stats, relu);
                        let inputs = [&dev(&x), &dev(&gamma), &dev(&mean), &dev(&var), &dev(&dy)];
                        let got_grads = backward(gpu, inputs, got_fwd, batch_stats, relu);
                        for ((name, got), want) in ["dx", "dgamma", "dbeta"].iter().zip(&got_grads).zip(&want_grads) {
                            check(&what(&format!("backward (batch stats {batch_stats}) {name}")), got, want, dtype);
                        }
                    }
                }
            }
        }
    }
}

/// Statistics in one pass about a shift: a channel whose mean is 1000 standard deviations from
/// zero (sums of x and x^2 would lose the variance to rounding in f32) and one whose first
/// element, the shift, lies 8 standard deviations from the rest. f32, two chunks per channel.
#[test]
fn batch_statistics_hold_far_from_zero_and_about_an_outlying_first_element() {
    let shape = [3, 2, 61, 57];
    let plane = shape[2] * shape[3];
    let mut rng = Rng::new(9);
    let mut data = randn_as(&mut rng, &shape, 1.0, DType::F32).to_f64_vec();
    for (i, v) in data.iter_mut().enumerate() {
        let channel = (i / plane) % shape[1];
        if channel == 0 {
            *v += 1000.0;
        }
    }
    data[plane] = 8.0;
    let x = Tensor::from_f64(&data, shape.to_vec(), DType::F32).unwrap();
    let gamma = Tensor::from_f64(&[1.0, 1.0], vec![2], DType::F32).unwrap();
    let beta = Tensor::from_f64(&[0.0, 0.0], vec![2], DType::F32).unwrap();
    let want = cpu().batch_norm_train(&x, &gamma, &beta, EPS, false).unwrap();
    for device in gpu_devices() {
        let dev = |t: &Tensor| on(t, device, DType::F32);
        let got = backend::get(device).batch_norm_train(&dev(&x), &dev(&gamma), &dev(&beta), EPS, false).unwrap();
        let what = |name: &str| format!("{device}: {name}");
        check(&what("mean"), &got.mean, &want.mean, DType::F32);
        // The variances are about 1: a relative tolerance of f32's, scaled to the mean's size.
        assert_close(&what("var"), &got.var.to_f64_vec(), &want.var.to_f64_vec(), 1e-4, 1e-4);
        check(&what("y"), &got.y, &want.y, DType::F32);
    }
}

/// (dx, d gamma, d beta) on `backend` with the forward `out`'s affine.
fn backward(
    backend: &dyn Backend,
    [x, gamma, mean, var, dy]: [&Tensor; 5],
    out: &BatchNormOut,
    batch_stats: bool,
    relu: bool,
) -> [Tensor; 3] {
    let (dx, dg, db) =
        backend.batch_norm_backward(x, gamma, mean, var, &out.affine, dy, EPS, batch_stats, relu).unwrap();
    [dx, dg, db]
}

/// The fused ReLU's backward masks exactly where its forward cut: dx of the fused op equals the
/// BatchNorm backward of dy masked by the forward's own zeros, bit for bit, on the device.
#[test]
fn the_fused_relu_masks_the_gradient_where_its_forward_cut() {
    for device in gpu_devices() {
        let gpu = backend::get(device);
        for dtype in DTYPES {
            let Case { x, gamma, beta, dy } = Case::new(7, &[3, 4, 9, 7], dtype);
            let dev = |t: &Tensor| on(t, device, dtype);
            let (x, gamma, beta, dy) = (dev(&x), dev(&gamma), dev(&beta), dev(&dy));
            let fused = gpu.batch_norm_train(&x, &gamma, &beta, EPS, true).unwrap();
            let plain = gpu.batch_norm_train(&x, &gamma, &beta, EPS, false).unwrap();
            let masked: Vec<f64> = (fused.y.to_f64_vec().iter().zip(dy.to_f64_vec()))
                .map(|(&y, g)| if y > 0.0 { g } else { 0.0 })
                .collect();
            let masked = Tensor::from_f64(&masked, dy.dims().to_vec(), dtype).unwrap().to_device(device).unwrap();
            let stats = [&x, &gamma, &fused.mean, &fused.var];
            let got = backward(gpu, [stats[0], stats[1], stats[2], stats[3], &dy], &fused, true, true);
            let want = backward(gpu, [stats[0], stats[1], stats[2], stats[3], &masked], &plain, true, false);
            for ((name, got), want) in ["dx", "dgamma", "dbeta"].iter().zip(&got).zip(&want) {
                assert_eq!(got.to_f64_vec(), want.to_f64_vec(), "{device} {dtype}: {name}");
            }
        }
    }
}
