//! GEMM parity: the driver's batched GEMM (cuBLASLt with its per-shape plans on a GPU, the
//! emulator's reference product otherwise) against the CPU backend in f64, over both
//! transposes, with and without the bias epilogue, batches of 1 and 3, and odd sizes whose
//! batch strides are not 16-byte multiples. Each shape runs twice with fresh operands, so the
//! second call goes through a cached plan with other pointers. On a machine without a GPU the
//! CUDA half is skipped with a message (see `gpu_devices`). The driver's strided batches (an
//! operand shared by every entry, entries spaced apart) are checked on the driver directly, and
//! the product with the bias-gradient epilogue (`matmul_bias_grad`) through the backend.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, rtol_of};
use msclip::backend::gpu::counters::measure;
use msclip::backend::gpu::{self, DevicePtr, GemmEpilogue, GemmSpec, GemmType};
use msclip::backend::{self, Backend};
use msclip::tensor::Storage;
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

/// Where a GPU tensor's elements are.
fn address(t: &Tensor) -> DevicePtr {
    match t.storage() {
        Storage::Gpu(g) => g.ptr(),
        Storage::Cpu(_) => panic!("a GPU tensor"),
    }
}

/// Batch entry `i` of the flat `values`, `stride` elements apart, as a [1, rows, cols] tensor.
fn entry(values: &[f64], i: usize, stride: usize, (rows, cols): (usize, usize)) -> Tensor {
    Tensor::from_f64(&values[i * stride..i * stride + rows * cols], [1, rows, cols], DType::F64).unwrap()
}

/// One GEMM batched over 3 entries with `a` shared (stride 0, a 1x1 convolution's weight
/// applied to each sample) and the entries of b and c spaced further apart than their size,
/// against the f64 CPU product of each entry; c's gaps keep their zeros. Odd sizes: strides
/// that are not 16-byte multiples.
#[test]
fn a_shared_operand_and_spaced_batch_entries_match_the_cpu() {
    let (batch, m, n, k) = (3, 9, 49, 13);
    let mut rng = Rng::new(22);
    for (dtype, gemm_type) in [(DType::F32, GemmType::F32), (DType::BF16, GemmType::BF16)] {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let spec = GemmSpec::new(gemm_type, batch, (m, n, k), (trans_a, trans_b));
            let spec = GemmSpec { batch_strides: [0, k * n + 5, m * n + 3], ..spec };
            let [_, b_stride, c_stride] = spec.batch_strides;
            let a = operand(&mut rng, if trans_a { [1, k, m] } else { [1, m, k] }, dtype);
            let b = operand(&mut rng, [1, 1, (batch - 1) * b_stride + k * n], dtype);
            let (a64, b_values) = (a.to_dtype(DType::F64).unwrap(), b.to_f64_vec());
            let b_dims = if trans_b { (n, k) } else { (k, n) };
            let want: Vec<Tensor> = (0..batch)
                .map(|i| {
                    let b_i = entry(&b_values, i, b_stride, b_dims);
                    product(backend::get(Device::Cpu), &a64, &b_i, (trans_a, trans_b), None)
                })
                .collect();
            for device in gpu_devices() {
                let (a_dev, b_dev) = (on(&a, device, dtype), on(&b, device, dtype));
                let c = Tensor::zeros([(batch - 1) * c_stride + m * n], dtype).to_device(device).unwrap();
                let driver = gpu::driver(device).unwrap();
                driver.gemm(spec, address(&a_dev), address(&b_dev), GemmEpilogue::None, address(&c)).unwrap();
                let what = format!("{dtype} on {device}: {spec:?}");
                let got = c.to_f64_vec();
                let atol = rtol_of(dtype) * (k as f64).sqrt() * 2.0;
                for (i, want) in want.iter().enumerate() {
                    let got_i = entry(&got, i, c_stride, (m, n)).to_f64_vec();
                    assert_close(&format!("{what}, entry {i}"), &got_i, &want.to_f64_vec(), atol, rtol_of(dtype));
                }
                let gaps = got.chunks(c_stride).flat_map(|e| e[m * n..].to_vec()).collect::<Vec<_>>();
                assert!(gaps.iter().all(|&v| v == 0.0), "{what}: c's gaps untouched");
            }
        }
    }
}

#[test]
fn overlapping_output_entries_are_refused() {
    let spec = GemmSpec::new(GemmType::F32, 2, (2, 3, 4), (false, false));
    let overlapping = GemmSpec { batch_strides: [8, 12, 5], ..spec };
    for device in gpu_devices() {
        let buffer = Tensor::zeros([64], DType::F32).to_device(device).unwrap();
        let p = address(&buffer);
        let err = gpu::driver(device).unwrap().gemm(overlapping, p, p, GemmEpilogue::None, p).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{device}: {err}");
    }
}

/// A linear layer's weight and bias gradients, dW = dy^T x and db = dy's column sums, as the
/// backward pass asks for them (a = dy transposed), and op(a)'s row sums for the other
/// transposes, against the f64 CPU: rows that are no multiple of a tile, 1 to 96 outputs. On the
/// emulator the sums come from the GEMM's epilogue: one GEMM and no kernel launched.
#[test]
fn the_bias_gradient_epilogue_matches_the_cpu() {
    let mut rng = Rng::new(23);
    // (rows of dy and x = k, outputs = m, inputs = n).
    for (k, m, n) in [(1, 1, 1), (50, 7, 13), (77, 96, 33), (200, 64, 96)] {
        for dtype in [DType::F32, DType::BF16] {
            for (trans_a, trans_b) in [(true, false), (false, false), (true, true), (false, true)] {
                let a = operand(&mut rng, if trans_a { [1, k, m] } else { [1, m, k] }, dtype);
                let b = operand(&mut rng, if trans_b { [1, n, k] } else { [1, k, n] }, dtype);
                let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                let cpu = backend::get(Device::Cpu);
                let (want, want_sums) = cpu.matmul_bias_grad(&f64s(&a), &f64s(&b), trans_a, trans_b).unwrap();
                assert_eq!(want_sums.dims(), [m]);
                for device in gpu_devices() {
                    let (a_dev, b_dev) = (on(&a, device, dtype), on(&b, device, dtype));
                    let ((got, sums), counts) =
                        measure(|| backend::get(device).matmul_bias_grad(&a_dev, &b_dev, trans_a, trans_b).unwrap());
                    let what = format!("{dtype} on {device}: {m}x{n}x{k}, trans ({trans_a}, {trans_b})");
                    let atol = rtol_of(dtype) * (k as f64).sqrt() * 2.0;
                    assert_eq!(got.dims(), [1, m, n], "{what}");
                    assert_close(&what, &got.to_f64_vec(), &want.to_f64_vec(), atol, rtol_of(dtype));
                    assert_close(
                        &format!("{what}: sums"),
                        &sums.to_f64_vec(),
                        &want_sums.to_f64_vec(),
                        atol,
                        rtol_of(dtype),
                    );
                    if device == Device::Emu {
                        assert_eq!(counts.gemms_by_spec.values().sum::<u64>(), 1, "{what}");
                        assert_eq!(counts.launches(), 0, "{what}: {:?}", counts.launches_by_kernel);
                    }
                }
            }
        }
    }
}

#[test]
fn a_bias_gradient_over_a_batch_is_refused() {
    let spec = GemmSpec::new(GemmType::F32, 2, (2, 3, 4), (true, false));
    for device in gpu_devices() {
        let buffer = Tensor::zeros([64], DType::F32).to_device(device).unwrap();
        let p = address(&buffer);
        let err = gpu::driver(device).unwrap().gemm(spec, p, p, GemmEpilogue::BiasGrad(p), p).unwrap_err();
        assert!(err.to_string().contains("single product"), "{device}: {err}");
    }
}
