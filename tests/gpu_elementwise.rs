//! Kernel parity (testing ladder, level 2) for kernels/elementwise.cu and kernels/loss.cu: every
//! op on the GPU devices (the emulator always, CUDA when present) against the CPU backend in
//! f64, from identical inputs, in f32 and bf16, on ragged shapes (width 1, single rows, sizes
//! that are not multiples of the warp, block or 128-bit pack).

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as, rtol_of};
use msclip::backend::{self, Activation, Backend, BinaryOp, UnaryOp};
use msclip::ops::IGNORE_TARGET;
use msclip::{DType, Device, Result, Rng, Table, Tensor};

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// `t` (CPU f32) rounded to the values `dtype` can hold, still in f32.
fn round_to(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// Runs `f` on the CPU in f64 (the reference) and on every GPU device in `dtype`, from the same
/// inputs (rounded to `dtype` first), and compares each output within `atol + rtol_of(dtype)`.
fn parity(
    what: &str,
    dtype: DType,
    inputs: &[Tensor],
    atol: f64,
    f: impl Fn(&dyn Backend, &[Tensor]) -> Result<Vec<Tensor>>,
) {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| round_to(t, dtype)).collect();
    let reference: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
    let want = f(backend::get(Device::Cpu), &reference).unwrap_or_else(|e| panic!("{what}: CPU: {e}"));
    for device in gpu_devices() {
        let on_device: Vec<Tensor> = inputs.iter().map(|t| on(t, device, dtype)).collect();
        let got = f(backend::get(device), &on_device).unwrap_or_else(|e| panic!("{what} {dtype} on {device}: {e}"));
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let label = format!("{what} {dtype} on {device}, output {k}");
            assert_eq!(g.dims(), w.dims(), "{label}: shape");
            assert_eq!(g.device(), device, "{label}: device");
            assert_close(&label, &g.to_f64_vec(), &w.to_f64_vec(), atol, rtol_of(dtype));
        }
    }
}

#[test]
fn casts_round_to_nearest_even_and_round_trip() {
    let mut rng = Rng::new(1);
    // Ties between two bf16 values (to even: down, then up), subnormals, infinities, extremes.
    let special: Vec<f32> =
        [0x3f80_8000u32, 0x3f81_8000, 0x0000_0001, 0x8000_8000, 0x7f7f_ffff, 0x7f80_0000, 0xff80_0000]
            .into_iter()
            .map(f32::from_bits)
            .collect();
    for n in [1, 3, 33, 769] {
        let mut values: Vec<f32> =
            rng.normal_tensor([n], 10.0, DType::F32).to_f64_vec().iter().map(|&v| v as f32).collect();
        values.iter_mut().zip(&special).for_each(|(v, &s)| *v = s);
        let x = Tensor::from_vec(values, [n]).unwrap();
        let want_bf16 = backend::get(Device::Cpu).cast(&x, DType::BF16).unwrap().to_f64_vec();
        for device in gpu_devices() {
            let be = backend::get(device);
            let x_dev = x.to_device(device).unwrap();
            let bf = be.cast(&x_dev, DType::BF16).unwrap();
            assert_eq!(bf.dtype(), DType::BF16);
            assert_eq!(bf.to_f64_vec(), want_bf16, "f32 -> bf16 on {device}, n = {n}");
            assert_eq!(be.cast(&bf, DType::F32).unwrap().to_f64_vec(), want_bf16, "bf16 -> f32 on {device}");
            let copy = be.cast(&x_dev, DType::F32).unwrap();
            assert!(!copy.shares_storage_with(&x_dev), "a same-dtype cast is a copy");
            assert_eq!(copy.to_f64_vec(), x.to_f64_vec(), "f32 -> f32 on {device}");
        }
    }
}

#[test]
fn binary_ops_with_the_right_operand_repeated() {
    let mut rng = Rng::new(2);
    let shapes: [(&[usize], &[usize]); 8] = [
        (&[1], &[1]),
        (&[3, 5], &[5]),
        (&[7, 33], &[33]),
        (&[2, 3, 77], &[3, 77]),
        (&[4, 16], &[16]),
        (&[5, 8], &[5, 8]),
        (&[257], &[257]),
        (&[3, 769], &[769]),
    ];
    for dtype in DTYPES {
        for (a_shape, b_shape) in shapes {
            let inputs = [randn_as(&mut rng, a_shape, 1.0, dtype), randn_as(&mut rng, b_shape, 1.0, dtype)];
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
                parity(&format!("{op:?} {a_shape:?} {b_shape:?}"), dtype, &inputs, 1e-6, |be, t| {
                    Ok(vec![be.binary(op, &t[0], &t[1])?])
                });
            }
        }
    }
}

#[test]
fn unary_ops_and_their_backward() {
    let mut rng = Rng::new(3);
    let ops = [UnaryOp::Exp, UnaryOp::Ln, UnaryOp::Relu, UnaryOp::QuickGelu, UnaryOp::Gelu, UnaryOp::Scale(-2.5)];
    for dtype in DTYPES {
        for shape in [&[1][..], &[33], &[7, 77], &[2, 16], &[3, 769]] {
            for op in ops {
                let mut x = randn_as(&mut rng, shape, 2.0, dtype);
                if op == UnaryOp::Ln {
                    x = backend::get(Device::Cpu).unary(UnaryOp::Exp, &x).unwrap();
                }
                let y = backend::get(Device::Cpu).unary(op, &x).unwrap();
                let dy = randn_as(&mut rng, shape, 1.0, dtype);
                parity(&format!("{op:?} {shape:?}"), dtype, &[x.clone()], 1e-6, |be, t| Ok(vec![be.unary(op, &t[0])?]));
                parity(&format!("{op:?} backward {shape:?}"), dtype, &[x, y, dy], 1e-6, |be, t| {
                    Ok(vec![be.unary_backward(op, &t[0], &t[1], &t[2])?])
                });
            }
        }
    }
}

/// The kernels `bias_quick_gelu_*` and `bias_gelu_*`, forward and backward.
fn bias_activation_forward_and_backward(act: Activation, seed: u64) {
    let mut rng = Rng::new(seed);
    // [300, 3] and [2, 40, 16] have enough rows for d bias to take several row chunks.
    for dtype in DTYPES {
        for shape in [&[1, 1][..], &[3, 5], &[33, 77], &[2, 40, 16], &[300, 3], &[1, 769]] {
            let width = *shape.last().unwrap();
            let inputs = [
                randn_as(&mut rng, shape, 2.0, dtype),
                randn_as(&mut rng, &[width], 1.0, dtype),
                randn_as(&mut rng, shape, 1.0, dtype),
            ];
            parity(&format!("{} {shape:?}", act.bias_op()), dtype, &inputs, 1e-6, |be, t| {
                let (dx, dbias) = be.bias_activation_backward(&t[0], &t[1], &t[2], act)?;
                Ok(vec![be.bias_activation(&t[0], &t[1], act)?, dx, dbias])
            });
        }
    }
}

#[test]
fn bias_quick_gelu_forward_and_backward() {
    bias_activation_forward_and_backward(Activation::QuickGelu, 4);
}

#[test]
fn bias_gelu_forward_and_backward() {
    bias_activation_forward_and_backward(Activation::Gelu, 14);
}

#[test]
fn sums_over_a_middle_dimension() {
    let mut rng = Rng::new(5);
    // (1, 70000, 1) takes four passes of row-chunk partial sums.
    for dtype in DTYPES {
        for [outer, n, inner] in
            [[1, 1, 1], [1, 1000, 1], [3, 77, 33], [2, 5, 16], [4, 257, 8], [1, 70000, 1], [2, 3, 769]]
        {
            let x = randn_as(&mut rng, &[outer, n, inner], 1.0, dtype);
            let atol = 1e-5 * (n as f64).sqrt();
            parity(&format!("sum_middle {outer}x{n}x{inner}"), dtype, &[x], atol, |be, t| {
                Ok(vec![be.sum_middle(&t[0], outer, n, inner)?])
            });
        }
    }
}

#[test]
fn sums_are_bitwise_reproducible() {
    let mut rng = Rng::new(6);
    let x = randn_as(&mut rng, &[3, 5000, 7], 1.0, DType::F32).to_device(Device::Emu).unwrap();
    let be = backend::get(Device::Emu);
    let first = be.sum_middle(&x, 3, 5000, 7).unwrap().to_f64_vec();
    for _ in 0..3 {
        assert_eq!(be.sum_middle(&x, 3, 5000, 7).unwrap().to_f64_vec(), first);
    }
}

#[test]
fn softmax_forward_and_backward_with_masked_rows() {
    let mut rng = Rng::new(7);
    for dtype in DTYPES {
        for shape in [&[1, 1][..], &[3, 1], &[5, 33], &[7, 77], &[2, 3, 16], &[4, 769]] {
            let x = randn_as(&mut rng, shape, 3.0, dtype);
            parity(&format!("softmax {shape:?}"), dtype, &[x], 1e-6, |be, t| Ok(vec![be.softmax(&t[0])?]));
            let (y, dy) = (randn_as(&mut rng, shape, 0.3, dtype), randn_as(&mut rng, shape, 1.0, dtype));
            parity(&format!("softmax backward {shape:?}"), dtype, &[y, dy], 1e-5, |be, t| {
                Ok(vec![be.softmax_backward(&t[0], &t[1])?])
            });
        }
    }
    // Row 0 fully masked (zeros out), row 1 partly masked.
    let inf = f32::NEG_INFINITY;
    let x = Tensor::from_vec(vec![inf, inf, inf, 0.5, inf, -1.0], [2, 3]).unwrap();
    for dtype in DTYPES {
        parity("softmax masked", dtype, std::slice::from_ref(&x), 1e-6, |be, t| Ok(vec![be.softmax(&t[0])?]));
    }
}

#[test]
fn l2_normalize_forward_and_backward_above_and_below_eps() {
    let mut rng = Rng::new(8);
    let eps = 1e-6;
    for dtype in DTYPES {
        for shape in [&[1, 1][..], &[1, 3], &[5, 33], &[3, 77], &[2, 16], &[4, 769]] {
            let mut x = randn_as(&mut rng, shape, 1.0, dtype).to_f64_vec();
            // The first row's norm is zero, below eps: y = x / eps and dx = dy / eps.
            let d = *shape.last().unwrap();
            x[..d].iter_mut().for_each(|v| *v = 0.0);
            let x = Tensor::from_f64(&x, shape.to_vec(), DType::F32).unwrap();
            parity(&format!("l2_normalize {shape:?}"), dtype, std::slice::from_ref(&x), 1e-6, |be, t| {
                let (y, norm) = be.l2_normalize(&t[0], eps)?;
                Ok(vec![y, norm])
            });
            let (y, norm) = backend::get(Device::Cpu).l2_normalize(&x, eps).unwrap();
            let dy = randn_as(&mut rng, shape, 1.0, dtype);
            parity(&format!("l2_normalize backward {shape:?}"), dtype, &[y, norm, dy], 1e-5, |be, t| {
                Ok(vec![be.l2_normalize_backward(&t[0], &t[1], &t[2], eps)?])
            });
        }
    }
}

#[test]
fn cross_entropy_forward_and_backward() {
    let mut rng = Rng::new(9);
    for dtype in DTYPES {
        for [n, classes] in [[1, 1], [3, 5], [7, 33], [4, 16], [5, 769], [33, 77]] {
            let logits = randn_as(&mut rng, &[n, classes], 3.0, dtype);
            // Every third row ignored (IGNORE_TARGET), as MLM's padding rows are.
            let ids = (0..n).map(|i| if i % 3 == 2 { IGNORE_TARGET } else { rng.below(classes) as u32 });
            let targets = Table::new(ids.collect());
            parity(&format!("cross_entropy {n}x{classes}"), dtype, std::slice::from_ref(&logits), 1e-5, |be, t| {
                let (loss, lse) = be.cross_entropy(&t[0], &targets)?;
                Ok(vec![loss, lse])
            });
            let (_, lse) = backend::get(Device::Cpu).cross_entropy(&logits, &targets).unwrap();
            let dloss = Tensor::from_vec(vec![0.75f32], [1]).unwrap();
            parity(&format!("cross_entropy backward {n}x{classes}"), dtype, &[logits, lse, dloss], 1e-6, |be, t| {
                Ok(vec![be.cross_entropy_backward(&t[0], &t[1], &targets, &t[2])?])
            });
        }
    }
}

#[test]
fn f64_inputs_are_refused_with_a_clear_error() {
    let be = backend::get(Device::Emu);
    let x = Tensor::zeros([2, 3], DType::F64).to_device(Device::Emu).unwrap();
    let errors = [
        be.cast(&x, DType::F32).err(),
        be.cast(&on(&Tensor::zeros([2], DType::F32), Device::Emu, DType::F32), DType::F64).err(),
        be.binary(BinaryOp::Add, &x, &x).err(),
        be.unary(UnaryOp::Exp, &x).err(),
        be.sum_middle(&x, 1, 2, 3).err(),
        be.softmax(&x).err(),
        be.l2_normalize(&x, 1e-6).err(),
        be.cross_entropy(&x, &Table::new(vec![0, 1])).err(),
        be.bias_activation(&x, &Tensor::zeros([3], DType::F64).to_device(Device::Emu).unwrap(), Activation::Gelu).err(),
    ];
    for (i, e) in errors.into_iter().enumerate() {
        let message = e.unwrap_or_else(|| panic!("op {i} accepted f64")).to_string();
        assert!(message.contains("f64"), "op {i}: {message}");
    }
}
