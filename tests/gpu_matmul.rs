//! GEMM parity: the driver's batched GEMM (cuBLASLt with its per-shape plans on a GPU, the
//! emulator's reference product otherwise) against the CPU backend in f64, over both
//! transposes, with and without the bias epilogue, batches of 1 and 3, and odd sizes whose
//! batch strides are not 16-byte multiples. Each shape runs twice with fresh operands, so the
//! second call goes through a cached plan with other pointers. On a machine without a GPU the
//! CUDA half is skipped with a message (see `gpu_devices`).

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, rtol_of};
use msclip::backend::{self, Backend};
use msclip::{DType, Device, Rng, Tensor};

/// (batch, m, n, k).
const SHAPES: [(usize, usize, usize, usize); 5] =
    [(1, 1, 1, 1), (1, 7, 13, 5), (3, 50, 77, 33), (3, 9, 64, 96), (1, 128, 96, 64)];

/// A [dims] tensor of N(0, 1) values that `dtype` holds exactly, in f32 on the CPU.
fn operand(rng: &mut Rng, dims: [usize; 3], dtype: DType) -> Tensor {
    rng.normal_tensor(dims, 1.0, DType::F32).to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

fn product(be: &dyn Backend, a: &Tensor, b: &Tensor, t: (bool, bool), bias: Option<&Tensor>) -> Tensor {
    be.matmul(a, b, t.0, t.1, bias).unwrap_or_else(|e| panic!("matmul on {}: {e}", be.name()))
}

#[test]
fn gemms_match_the_cpu_over_transposes_bias_batches_and_odd_shapes() {
    let mut rng = Rng::new(21);
    for dtype in [DType::F32, DType::BF16] {
        for (batch, m, n, k) in SHAPES {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                for with_bias in [false, true] {
                    for repeat in 0..2 {
                        let a = operand(&mut rng, if trans_a { [batch, k, m] } else { [batch, m, k] }, dtype);
                        let b = operand(&mut rng, if trans_b { [batch, n, k] } else { [batch, k, n] }, dtype);
                        let bias = with_bias.then(|| operand(&mut rng, [1, 1, n], dtype).reshape([n]).unwrap());
                        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                        let bias64 = bias.as_ref().map(f64s);
                        let want = product(
                            backend::get(Device::Cpu),
                            &f64s(&a),
                            &f64s(&b),
                            (trans_a, trans_b),
                            bias64.as_ref(),
                        );
                        for device in gpu_devices() {
                            let bias_dev = bias.as_ref().map(|t| on(t, device, dtype));
                            let got = product(
                                backend::get(device),
                                &on(&a, device, dtype),
                                &on(&b, device, dtype),
                                (trans_a, trans_b),
                                bias_dev.as_ref(),
                            );
                            let what = format!(
                                "{dtype} on {device}: batch {batch}, {m}x{n}x{k}, trans ({trans_a}, {trans_b}), \
                                 bias {with_bias}, call {repeat}"
                            );
                            assert_eq!(got.dims(), [batch, m, n], "{what}");
                            // Sums of k products of N(0, 1) values: errors grow like sqrt(k).
                            let atol = rtol_of(dtype) * (k as f64).sqrt() * 2.0;
                            assert_close(&what, &got.to_f64_vec(), &want.to_f64_vec(), atol, rtol_of(dtype));
                        }
                    }
                }
            }
        }
    }
}
