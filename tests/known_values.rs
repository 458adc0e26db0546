//! Ops against values computed by hand or by an independent naive loop.

mod common;

use common::{assert_close, randn};
use msclip::backend::{AttnMask, Conv2dGeometry};
use msclip::ops::{self, BatchNormMode};
use msclip::{DType, Rng, Table, Tensor};

fn t(data: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64(data, shape.to_vec(), DType::F64).unwrap()
}

#[test]
fn layer_norm_of_one_to_four() {
    // mean 2.5, biased variance 1.25, so xhat = (x - 2.5) / sqrt(1.25); then *2 + 1.
    let x = t(&[1.0, 2.0, 3.0, 4.0], &[1, 4]);
    let y = x.layer_norm(&t(&[2.0; 4], &[4]), &t(&[1.0; 4], &[4]), 0.0).unwrap();
    let s = 1.25f64.sqrt();
    let want: Vec<f64> = [-1.5, -0.5, 0.5, 1.5].iter().map(|v| v / s * 2.0 + 1.0).collect();
    assert_close("layer_norm", &y.to_f64_vec(), &want, 1e-12, 0.0);
    // eps enters under the square root: var 1.25 + eps 0.75 = 2.
    let y = x.layer_norm(&t(&[1.0; 4], &[4]), &t(&[0.0; 4], &[4]), 0.75).unwrap();
    let want: Vec<f64> = [-1.5, -0.5, 0.5, 1.5].iter().map(|v| v / 2f64.sqrt()).collect();
    assert_close("layer_norm eps", &y.to_f64_vec(), &want, 1e-12, 0.0);
}

#[test]
fn fused_residual_layer_norm_equals_add_then_norm() {
    let mut r = Rng::new(1);
    let (x, res) = (randn(&mut r, &[5, 9]), randn(&mut r, &[5, 9]));
    let (g, b) = (randn(&mut r, &[9]), randn(&mut r, &[9]));
    let (sum, y) = x.add_layer_norm(&res, &g, &b, 1e-5).unwrap();
    let sum_ref = x.add(&res).unwrap();
    assert_close("sum", &sum.to_f64_vec(), &sum_ref.to_f64_vec(), 0.0, 0.0);
    let y_ref = sum_ref.layer_norm(&g, &b, 1e-5).unwrap();
    assert_close("y", &y.to_f64_vec(), &y_ref.to_f64_vec(), 1e-14, 0.0);
}

#[test]
fn softmax_of_one_two_three() {
    let y = t(&[1.0, 2.0, 3.0, 5.0, 5.0, 5.0], &[2, 3]).softmax().unwrap();
    let z = 1f64.exp() + 2f64.exp() + 3f64.exp();
    let want = [1f64.exp() / z, 2f64.exp() / z, 3f64.exp() / z, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
    assert_close("softmax", &y.to_f64_vec(), &want, 1e-15, 0.0);
    // A fully masked row is zeros, not NaN.
    let y = t(&[f64::NEG_INFINITY; 3], &[1, 3]).softmax().unwrap();
    assert_eq!(y.to_f64_vec(), vec![0.0; 3]);
}

/// The exact GELU, x Phi(x), and its derivative Phi(x) + x phi(x), against values of the
/// standard normal's cdf and density (mpmath at 30 digits): gelu(1) = Phi(1), gelu(-1) =
/// -(1 - Phi(1)). QuickGELU differs from them by up to 0.02 (x sigmoid(1.702 x) at 1 is 0.846).
#[test]
fn gelu_of_known_points() {
    let x = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0];
    let values = [
        -0.004_049_694_094_890_284,
        -0.158_655_253_931_457_05,
        -0.154_268_769_362_993_45,
        0.0,
        0.345_731_230_637_006_55,
        0.841_344_746_068_542_9,
        2.995_950_305_905_11,
    ];
    let slopes = [
        -0.011_945_647_204_183_927,
        -0.083_315_470_587_686_3,
        0.132_504_875_343_837_16,
        0.5,
        0.867_495_124_656_162_8,
        1.083_315_470_587_686_3,
        1.011_945_647_204_184,
    ];
    let xs = t(&x, &[7]).set_requires_grad(true);
    let y = xs.gelu().unwrap();
    assert_close("gelu", &y.to_f64_vec(), &values, 1e-15, 1e-15);
    let grads = msclip::autograd::backward(&y.sum_all().unwrap()).unwrap();
    assert_close("gelu'", &grads.get(&xs).unwrap().to_f64_vec(), &slopes, 1e-15, 1e-15);
    // The fused op adds the bias first: gelu(x + b) with b = 1 - x is gelu(1) everywhere.
    let bias: Vec<f64> = x.iter().map(|v| 1.0 - v).collect();
    let fused = t(&x, &[1, 7]).bias_activation(&t(&bias, &[7]), msclip::backend::Activation::Gelu).unwrap();
    assert_close("bias_gelu", &fused.to_f64_vec(), &[values[5]; 7], 1e-15, 1e-15);
    // In f32 (libm's erff): the same values to f32 rounding.
    let y32 = t(&x, &[7]).to_dtype(DType::F32).unwrap().gelu().unwrap();
    assert_close("gelu f32", &y32.to_f64_vec(), &values, 1e-7, 1e-6);
}

#[test]
fn infonce_two_by_two_by_hand() {
    // img = I, txt rows (0.6, 0.8) and (1, 0), scale exp(ln 2) = 2:
    // logits = [[1.2, 2.0], [1.6, 0.0]], positives on the diagonal.
    let img = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let txt = t(&[0.6, 0.8, 1.0, 0.0], &[2, 2]);
    let scale = t(&[2f64.ln()], &[1]);
    let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
    let rows = (lse(1.2, 2.0) - 1.2) + (lse(1.6, 0.0) - 0.0);
    let cols = (lse(1.2, 1.6) - 1.2) + (lse(2.0, 0.0) - 0.0);
    let want = (rows / 2.0 + cols / 2.0) / 2.0;
    let loss = ops::infonce(&img, &txt, &scale, None).unwrap().item().unwrap();
    assert!((loss - want).abs() < 1e-14, "loss {loss}, want {want}");
    assert!((want - 1.4987361675697604).abs() < 1e-14, "hand value");
    // With the clamp at 1.5 the logits are scaled by 1.5 instead of 2.
    let clamped = ops::infonce(&img, &txt, &scale, Some(1.5)).unwrap().item().unwrap();
    let unclamped_at_1_5 = ops::infonce(&img, &txt, &t(&[1.5f64.ln()], &[1]), None).unwrap().item().unwrap();
    assert!((clamped - unclamped_at_1_5).abs() < 1e-14);
}

#[test]
fn cross_entropy_by_hand() {
    // logits (0, ln 3) -> p = (1/4, 3/4); target 1 -> -ln(3/4).
    let loss = ops::cross_entropy(&t(&[0.0, 3f64.ln()], &[1, 2]), &Table::new(vec![1])).unwrap().item().unwrap();
    assert!((loss + (0.75f64).ln()).abs() < 1e-15);
    // A second row whose target is ignored changes nothing: the mean is over the first alone.
    let logits = t(&[0.0, 3f64.ln(), 5.0, -2.0], &[2, 2]);
    let loss = ops::cross_entropy(&logits, &Table::new(vec![1, ops::IGNORE_TARGET])).unwrap().item().unwrap();
    assert!((loss + (0.75f64).ln()).abs() < 1e-15);
}

/// The textbook seven-loop convolution.
fn naive_conv(x: &Tensor, w: &Tensor, stride: usize, pad: usize, groups: usize) -> Vec<f64> {
    let (xd, wd) = (x.dims(), w.dims());
    let (n, c, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
    let (co, cg, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (wi + 2 * pad - kw) / stride + 1);
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let mut y = vec![0.0; n * co * ho * wo];
    for s in 0..n {
        for o in 0..co {
            let g = o / (co / groups);
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0.0;
                    for ci in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let (yy, xx) = (
                                    (oy * stride + i) as isize - pad as isize,
                                    (ox * stride + j) as isize - pad as isize,
                                );
                                if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < wi {
                                    let cin = g * cg + ci;
                                    acc += xv[((s * c + cin) * h + yy as usize) * wi + xx as usize]
                                        * wv[((o * cg + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    y[((s * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_matches_naive_loop() {
    let mut r = Rng::new(2);
    for (x, w, stride, pad, groups) in [
        ([2, 3, 9, 7], [5, 3, 3, 3], 2, 1, 1),
        ([1, 6, 8, 8], [6, 1, 3, 3], 1, 1, 6),
        ([3, 4, 7, 7], [8, 2, 3, 3], 3, 2, 2),
        ([1, 2, 16, 16], [2, 1, 16, 16], 16, 0, 2),
    ] {
        let (xt, wt) = (randn(&mut r, &x), randn(&mut r, &w));
        let geo = Conv2dGeometry { stride, padding: pad, groups };
        let y = ops::conv2d(&xt, &wt, geo).unwrap();
        assert_close("conv2d", &y.to_f64_vec(), &naive_conv(&xt, &wt, stride, pad, groups), 1e-12, 1e-12);
        // The f32 path agrees with the f64 one to f32 precision.
        let y32 = ops::conv2d(&xt.to_dtype(DType::F32).unwrap(), &wt.to_dtype(DType::F32).unwrap(), geo).unwrap();
        assert_close("conv2d f32", &y32.to_f64_vec(), &y.to_f64_vec(), 1e-4, 1e-4);
    }
}

#[test]
fn batch_norm_train_normalises_and_eval_uses_given_statistics() {
    let mut r = Rng::new(3);
    let x = randn(&mut r, &[4, 3, 5, 2]).scale(3.0).unwrap();
    let (ones, zeros) = (t(&[1.0; 3], &[3]), t(&[0.0; 3], &[3]));
    let (y, stats) = ops::batch_norm2d(&x, &ones, &zeros, 0.0, BatchNormMode::Train).unwrap();
    let (mean, var) = stats.unwrap();
    // Each channel of y has mean 0 and biased variance 1.
    let yv = y.to_f64_vec();
    for c in 0..3 {
        let vals: Vec<f64> = (0..4).flat_map(|n| (0..10).map(move |k| (n * 3 + c) * 10 + k)).map(|i| yv[i]).collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / vals.len() as f64;
        assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-12, "channel {c}: mean {m}, var {v}");
    }
    // Eval with the batch's own statistics reproduces train mode.
    let (y_eval, none) =
        ops::batch_norm2d(&x, &ones, &zeros, 0.0, BatchNormMode::Eval { mean: &mean, var: &var }).unwrap();
    assert!(none.is_none());
    assert_close("eval = train", &y_eval.to_f64_vec(), &yv, 1e-12, 0.0);
    // Eval with other statistics: y = (x - m) / sqrt(v + eps) * gamma + beta, by hand.
    let (m2, v2) = (t(&[1.0, -1.0, 0.5], &[3]), t(&[4.0, 0.25, 1.0], &[3]));
    let (g2, b2) = (t(&[2.0, 1.0, -1.0], &[3]), t(&[0.5, 0.0, 1.0], &[3]));
    let (y2, _) = ops::batch_norm2d(&x, &g2, &b2, 1e-5, BatchNormMode::Eval { mean: &m2, var: &v2 }).unwrap();
    let xv = x.to_f64_vec();
    let (mv, vv, gv, bv) = (m2.to_f64_vec(), v2.to_f64_vec(), g2.to_f64_vec(), b2.to_f64_vec());
    let want: Vec<f64> = (0..xv.len())
        .map(|i| {
            let c = (i / 10) % 3;
            (xv[i] - mv[c]) / (vv[c] + 1e-5).sqrt() * gv[c] + bv[c]
        })
        .collect();
    assert_close("eval by hand", &y2.to_f64_vec(), &want, 1e-12, 0.0);
}

#[test]
fn bf16_cast_rounds_to_nearest_even() {
    // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
    // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: the even one is 1 + 2^-6.
    let x = Tensor::from_vec(vec![1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -2.5], [3]).unwrap();
    let y = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(y.to_f64_vec(), vec![1.0, 1.0 + 2f64.powi(-6), -2.5]);
}

#[test]
fn attention_matches_softmax_of_scores() {
    // One head, composed from matmul and softmax: softmax(q k^T / sqrt(d)) v.
    let mut r = Rng::new(4);
    let (len, d) = (5, 4);
    let qkv = randn(&mut r, &[1, len, 3 * d]);
    let out = ops::attention(&qkv, 1, &AttnMask::none()).unwrap();
    let q = qkv.slice(2, 0, d).unwrap().reshape([len, d]).unwrap();
    let k = qkv.slice(2, d, d).unwrap().reshape([len, d]).unwrap();
    let v = qkv.slice(2, 2 * d, d).unwrap().reshape([len, d]).unwrap();
    let p = q.matmul(&k.transpose(0, 1).unwrap()).unwrap().scale(0.5).unwrap().softmax().unwrap();
    let want = p.matmul(&v).unwrap();
    assert_close("attention", &out.to_f64_vec(), &want.to_f64_vec(), 1e-13, 0.0);
}

/// Attention output after overwriting the k and v of chosen key positions with other values.
fn attend_with_keys_replaced(qkv: &Tensor, heads: usize, mask: &AttnMask, replaced: &[(usize, usize)]) -> Vec<f64> {
    let (len, packed) = (qkv.dims()[1], qkv.dims()[2]);
    let width = packed / 3;
    let mut data = qkv.to_f64_vec();
    for &(b, key) in replaced {
        for c in width..packed {
            data[(b * len + key) * packed + c] += 100.0;
        }
    }
    let moved = Tensor::from_f64(&data, qkv.dims().to_vec(), DType::F64).unwrap();
    ops::attention(&moved, heads, mask).unwrap().to_f64_vec()
}

#[test]
fn causal_rows_never_see_the_future() {
    let mut r = Rng::new(5);
    let (len, width) = (6, 8);
    let qkv = randn(&mut r, &[1, len, 3 * width]);
    let mask = AttnMask::causal();
    let base = ops::attention(&qkv, 2, &mask).unwrap().to_f64_vec();
    for key in 1..len {
        let moved = attend_with_keys_replaced(&qkv, 2, &mask, &[(0, key)]);
        for q in 0..len {
            let row = |v: &[f64]| v[q * width..(q + 1) * width].to_vec();
            if q < key {
                assert_eq!(row(&moved), row(&base), "query {q} changed when key {key} changed");
            } else {
                assert_ne!(row(&moved), row(&base), "query {q} ignores visible key {key}");
            }
        }
    }
}

#[test]
fn padded_keys_get_zero_weight_and_empty_rows_are_zero() {
    let mut r = Rng::new(6);
    let (len, width) = (5, 6);
    let qkv = randn(&mut r, &[3, len, 3 * width]);
    let mask = AttnMask::key_padding(vec![2, 5, 0]);
    let base = ops::attention(&qkv, 3, &mask).unwrap().to_f64_vec();
    // Keys 2.. of sequence 0 are padding: changing them changes nothing.
    let moved = attend_with_keys_replaced(&qkv, 3, &mask, &[(0, 2), (0, 3), (0, 4)]);
    assert_eq!(moved, base);
    // Sequence 2 has no valid key: its output is exactly zero, never NaN.
    let seq2 = &base[2 * len * width..];
    assert!(seq2.iter().all(|&v| v == 0.0), "fully masked rows must be zero");
    assert!(base.iter().all(|v| v.is_finite()));
}
