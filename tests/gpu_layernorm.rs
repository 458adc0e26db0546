//! kernels/layernorm.cu against the CPU reference: forward with and without the residual, and
//! backward (with the residual stream's gradient added into dx when there is a residual), over
//! ragged widths and row counts, in f32 and bf16, with one gamma and beta for all rows and with
//! a second pair from a given row on (a modality-fused layer's text rows).

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as, rtol_of};
use msclip::backend::{self, LayerNormGrads, LnAffine};
use msclip::{DType, Device, Rng, Tensor};

const EPS: f64 = 1e-5;
/// (rows, width): a single row, width 1, widths that are not multiples of the warp or of the
/// 4- and 8-element vector packs, and enough rows to stride past the forward grid's warps.
const SHAPES: [(usize, usize); 7] = [(1, 1), (1, 64), (3, 33), (5, 77), (70, 96), (9, 257), (130, 768)];

/// `t + offset`, rounded to `dtype`'s values, as an f32 CPU tensor.
fn shifted(t: &Tensor, offset: f64, dtype: DType) -> Tensor {
    let data: Vec<f64> = t.to_f64_vec().iter().map(|v| v + offset).collect();
    Tensor::from_f64(&data, t.dims().to_vec(), dtype).unwrap().to_dtype(DType::F32).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec()
}

/// The affine of a LayerNorm: `gamma`, `beta` for every row, or with a second segment from row
/// `split` on.
fn affine_of(params: [&Tensor; 4], split: Option<usize>) -> LnAffine {
    let affine = LnAffine::new(params[0], params[1]);
    match split {
        Some(row) => affine.with_second(row, params[2], params[3]),
        None => affine,
    }
}

/// Forward (with and without the residual) and backward of `rows` x `width` on every GPU device
/// in f32 and bf16 against the CPU on the same inputs; with `split`, the rows from it on take a
/// second gamma and beta.
fn check_against_the_cpu(rows: usize, width: usize, split: Option<usize>, seed: u64) {
    let cpu = backend::get(Device::Cpu);
    for device in gpu_devices() {
        let gpu = backend::get(device);
        for dtype in [DType::F32, DType::BF16] {
            let rtol = rtol_of(dtype);
            let mut rng = Rng::new(seed);
            let x = randn_as(&mut rng, &[rows, width], 1.0, dtype);
            // A large common offset: the two-pass variance must not cancel.
            let residual = shifted(&randn_as(&mut rng, &[rows, width], 1.0, dtype), 3.0, dtype);
            let params = [(); 4].map(|_| randn_as(&mut rng, &[width], 1.0, dtype));
            let dy = randn_as(&mut rng, &[rows, width], 1.0, dtype);
            // The gradient the fused residual's sum also receives from the residual stream.
            let stream_grad = randn_as(&mut rng, &[rows, width], 1.0, dtype);
            let what = |part: &str| format!("{device} {dtype} rows {rows} width {width} split {split:?}: {part}");
            let cpu_affine = affine_of(params.each_ref(), split);
            let gpu_params = params.each_ref().map(|t| on(t, device, dtype));
            let gpu_affine = affine_of(gpu_params.each_ref(), split);

            for with_residual in [false, true] {
                let want = cpu.layer_norm(&x, with_residual.then_some(&residual), &cpu_affine, EPS).unwrap();
                let (gx, gr) = (on(&x, device, dtype), on(&residual, device, dtype));
                let got = gpu.layer_norm(&gx, with_residual.then_some(&gr), &gpu_affine, EPS).unwrap();
                // The GPU rounds x + residual to the dtype before normalising; compare the
                // CPU's output on the same rounded sum.
                let input = match (&got.sum, with_residual) {
                    (Some(s), true) => {
                        let s32 = s.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
                        assert_close(&what("sum"), &f64s(&s32), &f64s(want.sum.as_ref().unwrap()), 1e-6, rtol);
                        s32
                    }
                    _ => x.clone(),
                };
                let want = cpu.layer_norm(&input, None, &cpu_affine, EPS).unwrap();
                assert_close(&what("y"), &f64s(&got.y), &f64s(&want.y), 1e-5, rtol);
                assert_close(&what("mean"), &f64s(&got.mean), &f64s(&want.mean), 1e-5, 1e-5);
                assert_close(&what("rstd"), &f64s(&got.rstd), &f64s(&want.rstd), 1e-5, 1e-4);

                let plus = with_residual.then_some(&stream_grad);
                let want = cpu.layer_norm_backward(&input, &cpu_affine, &want.mean, &want.rstd, &dy, plus).unwrap();
                let got = gpu
                    .layer_norm_backward(
                        &on(&input, device, dtype),
                        &gpu_affine,
                        &got.mean,
                        &got.rstd,
                        &on(&dy, device, dtype),
                        plus.map(|p| on(p, device, dtype)).as_ref(),
                    )
                    .unwrap();
                // Gradient sums over rows grow with sqrt(rows) in magnitude, hence the atol.
                let atol = 1e-4 * (rows as f64).sqrt();
                assert_close(&what("dx"), &f64s(&got.dx), &f64s(&want.dx), 1e-4, 2.0 * rtol);
                assert_close(&what("dgamma"), &f64s(&got.dgamma), &f64s(&want.dgamma), atol, 2.0 * rtol);
                assert_close(&what("dbeta"), &f64s(&got.dbeta), &f64s(&want.dbeta), atol, 2.0 * rtol);
                assert_eq!(got.second.is_some(), split.is_some(), "{}", what("second segment"));
                if let (Some((dgamma2, dbeta2)), Some((want_dgamma2, want_dbeta2))) = (&got.second, &want.second) {
                    assert_close(&what("dgamma2"), &f64s(dgamma2), &f64s(want_dgamma2), atol, 2.0 * rtol);
                    assert_close(&what("dbeta2"), &f64s(dbeta2), &f64s(want_dbeta2), atol, 2.0 * rtol);
                }
            }
        }
    }
}

#[test]
fn layer_norm_forward_and_backward_match_the_cpu() {
    for (i, &(rows, width)) in SHAPES.iter().enumerate() {
        check_against_the_cpu(rows, width, None, 100 + i as u64);
    }
}

#[test]
fn two_segment_layer_norm_matches_the_cpu() {
    // (rows, width, first row of the second segment): odd widths and split rows, a split inside
    // a backward block (64 rows) and one after a whole block and one row, either segment empty.
    let cases = [(7, 33, 3), (9, 77, 0), (9, 77, 9), (130, 96, 65), (70, 257, 1), (1, 1, 1)];
    for (i, &(rows, width, split)) in cases.iter().enumerate() {
        check_against_the_cpu(rows, width, Some(split), 200 + i as u64);
    }
}

#[test]
fn layer_norm_backward_is_deterministic() {
    let mut rng = Rng::new(5);
    let device = Device::Emu;
    let gpu = backend::get(device);
    let (rows, width) = (300, 40);
    let x = on(&randn_as(&mut rng, &[rows, width], 1.0, DType::F32), device, DType::F32);
    let gamma = on(&randn_as(&mut rng, &[width], 1.0, DType::F32), device, DType::F32);
    let beta = on(&randn_as(&mut rng, &[width], 1.0, DType::F32), device, DType::F32);
    let dy = on(&randn_as(&mut rng, &[rows, width], 1.0, DType::F32), device, DType::F32);
    let affine = LnAffine::new(&gamma, &beta).with_second(rows / 3, &beta, &gamma);
    let out = gpu.layer_norm(&x, None, &affine, EPS).unwrap();
    let first = gpu.layer_norm_backward(&x, &affine, &out.mean, &out.rstd, &dy, None).unwrap();
    let second = gpu.layer_norm_backward(&x, &affine, &out.mean, &out.rstd, &dy, None).unwrap();
    let sums = |g: &LayerNormGrads| {
        let (dgamma2, dbeta2) = g.second.as_ref().unwrap();
        [&g.dgamma, &g.dbeta, dgamma2, dbeta2].map(f64s)
    };
    assert_eq!(sums(&first), sums(&second));
}

#[test]
fn a_gradient_added_into_dx_must_be_shaped_like_it() {
    let mut rng = Rng::new(6);
    for device in [Device::Cpu].into_iter().chain(gpu_devices()) {
        let be = backend::get(device);
        let mut tensor = |dims: &[usize]| on(&randn_as(&mut rng, dims, 1.0, DType::F32), device, DType::F32);
        let (x, gamma, beta, dy) = (tensor(&[4, 8]), tensor(&[8]), tensor(&[8]), tensor(&[4, 8]));
        let affine = LnAffine::new(&gamma, &beta);
        let out = be.layer_norm(&x, None, &affine, EPS).unwrap();
        let wrong = [tensor(&[8, 4]), on(&dy, device, DType::BF16)];
        for plus in &wrong {
            let err = be.layer_norm_backward(&x, &affine, &out.mean, &out.rstd, &dy, Some(plus)).err();
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("added into dx"), "{device} {plus:?}: {message}");
        }
    }
}

#[test]
fn f64_is_a_clear_error_on_the_gpu_backend() {
    let x = Tensor::zeros([2, 4], DType::F64).to_device(Device::Emu).unwrap();
    let g = Tensor::zeros([4], DType::F64).to_device(Device::Emu).unwrap();
    let err = backend::get(Device::Emu).layer_norm(&x, None, &LnAffine::new(&g, &g), EPS).err().unwrap();
    assert!(err.to_string().contains("f64"), "{err}");
}
