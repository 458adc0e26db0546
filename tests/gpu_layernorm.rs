//! kernels/layernorm.cu against the CPU reference: forward with and without the residual, and
//! backward, over ragged widths and row counts, in f32 and bf16.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as, rtol_of};
use msclip::backend;
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

#[test]
fn layer_norm_forward_and_backward_match_the_cpu() {
    let cpu = backend::get(Device::Cpu);
    for device in gpu_devices() {
        let gpu = backend::get(device);
        for dtype in [DType::F32, DType::BF16] {
            let rtol = rtol_of(dtype);
            for (i, &(rows, width)) in SHAPES.iter().enumerate() {
                let mut rng = Rng::new(100 + i as u64);
                let x = randn_as(&mut rng, &[rows, width], 1.0, dtype);
                // A large common offset: the two-pass variance must not cancel.
                let residual = shifted(&randn_as(&mut rng, &[rows, width], 1.0, dtype), 3.0, dtype);
                let gamma = randn_as(&mut rng, &[width], 1.0, dtype);
                let beta = randn_as(&mut rng, &[width], 1.0, dtype);
                let dy = randn_as(&mut rng, &[rows, width], 1.0, dtype);
                let what = |part: &str| format!("{device} {dtype} rows {rows} width {width}: {part}");

                for with_residual in [false, true] {
                    let want = cpu.layer_norm(&x, with_residual.then_some(&residual), &gamma, &beta, EPS).unwrap();
                    let (gx, gr, gg, gb) = (
                        on(&x, device, dtype),
                        on(&residual, device, dtype),
                        on(&gamma, device, dtype),
                        on(&beta, device, dtype),
                    );
                    let got = gpu.layer_norm(&gx, with_residual.then_some(&gr), &gg, &gb, EPS).unwrap();
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
                    let want = cpu.layer_norm(&input, None, &gamma, &beta, EPS).unwrap();
                    assert_close(&what("y"), &f64s(&got.y), &f64s(&want.y), 1e-5, rtol);
                    assert_close(&what("mean"), &f64s(&got.mean), &f64s(&want.mean), 1e-5, 1e-5);
                    assert_close(&what("rstd"), &f64s(&got.rstd), &f64s(&want.rstd), 1e-5, 1e-4);

                    let (dx, dgamma, dbeta) =
                        cpu.layer_norm_backward(&input, &gamma, &want.mean, &want.rstd, &dy).unwrap();
                    let (gdx, gdgamma, gdbeta) = gpu
                        .layer_norm_backward(
                            &on(&input, device, dtype),
                            &gg,
                            &got.mean,
                            &got.rstd,
                            &on(&dy, device, dtype),
                        )
                        .unwrap();
                    // Gradient sums over rows grow with sqrt(rows) in magnitude, hence the atol.
                    let atol = 1e-4 * (rows as f64).sqrt();
                    assert_close(&what("dx"), &f64s(&gdx), &f64s(&dx), 1e-4, 2.0 * rtol);
                    assert_close(&what("dgamma"), &f64s(&gdgamma), &f64s(&dgamma), atol, 2.0 * rtol);
                    assert_close(&what("dbeta"), &f64s(&gdbeta), &f64s(&dbeta), atol, 2.0 * rtol);
                }
            }
        }
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
    let out = gpu.layer_norm(&x, None, &gamma, &beta, EPS).unwrap();
    let first = gpu.layer_norm_backward(&x, &gamma, &out.mean, &out.rstd, &dy).unwrap();
    let second = gpu.layer_norm_backward(&x, &gamma, &out.mean, &out.rstd, &dy).unwrap();
    assert_eq!(f64s(&first.1), f64s(&second.1));
    assert_eq!(f64s(&first.2), f64s(&second.2));
}

#[test]
fn f64_is_a_clear_error_on_the_gpu_backend() {
    let x = Tensor::zeros([2, 4], DType::F64).to_device(Device::Emu).unwrap();
    let g = Tensor::zeros([4], DType::F64).to_device(Device::Emu).unwrap();
    let err = backend::get(Device::Emu).layer_norm(&x, None, &g, &g, EPS).err().unwrap();
    assert!(err.to_string().contains("f64"), "{err}");
}
