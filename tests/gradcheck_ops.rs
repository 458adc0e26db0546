//! Every differentiable op against f64 central finite differences (testing ladder, level 1).
//! Shapes include sizes of 1 and non-powers of two.

// Inputs are cloned into fresh arrays on purpose: each check reads as one line.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{gradcheck, rand_range, randn};
use msclip::backend::{Activation, AttnMask, ContrastWeights, Conv2dGeometry, LnAffine};
use msclip::ops::{self, BatchNormMode};
use msclip::{Rng, Table, Tensor};

fn rng() -> Rng {
    Rng::new(42)
}

#[test]
fn matmul_2d_and_batched() {
    let mut r = rng();
    for (a, b) in [
        (vec![1, 1], vec![1, 1]),
        (vec![3, 5], vec![5, 7]),
        (vec![2, 3, 4], vec![2, 4, 1]),
        (vec![3, 1, 6], vec![3, 6, 5]),
    ] {
        gradcheck("matmul", &[randn(&mut r, &a), randn(&mut r, &b)], |x| x[0].matmul(&x[1]));
    }
}

#[test]
fn linear_with_and_without_bias() {
    let mut r = rng();
    for (x, out) in [(vec![1, 1], 1), (vec![2, 3, 5], 7), (vec![4, 6], 3)] {
        let w = randn(&mut r, &[out, *x.last().unwrap()]);
        let b = randn(&mut r, &[out]);
        let xt = randn(&mut r, &x);
        gradcheck("linear+bias", &[xt.clone(), w.clone(), b], |t| t[0].linear(&t[1], Some(&t[2])));
        gradcheck("linear", &[xt, w], |t| t[0].linear(&t[1], None));
    }
}

#[test]
fn elementwise_binary() {
    let mut r = rng();
    for shape in [vec![1], vec![3, 5], vec![2, 3, 7]] {
        let (a, b) = (randn(&mut r, &shape), randn(&mut r, &shape));
        gradcheck("add", &[a.clone(), b.clone()], |x| x[0].add(&x[1]));
        gradcheck("sub", &[a.clone(), b.clone()], |x| x[0].sub(&x[1]));
        gradcheck("mul", &[a.clone(), b.clone()], |x| x[0].mul(&x[1]));
        gradcheck("mul self", &[a], |x| x[0].mul(&x[0]));
    }
    let a = randn(&mut r, &[2, 3, 5]);
    for suffix in [vec![5], vec![3, 5], vec![2, 3, 5]] {
        let b = randn(&mut r, &suffix);
        gradcheck("add_broadcast", &[a.clone(), b.clone()], |x| x[0].add_broadcast(&x[1]));
        gradcheck("mul_broadcast", &[a.clone(), b], |x| x[0].mul_broadcast(&x[1]));
    }
}

#[test]
fn elementwise_unary() {
    let mut r = rng();
    for shape in [vec![1], vec![3, 7]] {
        let x = randn(&mut r, &shape);
        gradcheck("scale", &[x.clone()], |t| t[0].scale(-2.5));
        gradcheck("exp", &[x.clone()], |t| t[0].exp());
        gradcheck("relu", &[x.clone()], |t| t[0].relu());
        gradcheck("quick_gelu", &[x.clone()], |t| t[0].quick_gelu());
        gradcheck("gelu", &[x.clone()], |t| t[0].gelu());
        gradcheck("ln", &[rand_range(&mut r, &shape, 0.5, 3.0)], |t| t[0].ln());
    }
}

#[test]
fn bias_activation_fused() {
    let mut r = rng();
    for act in [Activation::QuickGelu, Activation::Gelu] {
        for shape in [vec![1, 1], vec![3, 5], vec![2, 3, 7]] {
            let bias = randn(&mut r, &[*shape.last().unwrap()]);
            gradcheck(act.bias_op(), &[randn(&mut r, &shape), bias], |t| t[0].bias_activation(&t[1], act));
        }
    }
}

/// GELU's curvature is largest near 0 and its tails flatten: inputs spread over [-6, 6] check the
/// derivative where Phi and x phi(x) trade places, which randn's unit spread samples thinly.
#[test]
fn gelu_over_a_wide_range() {
    let mut r = rng();
    gradcheck("gelu wide", &[rand_range(&mut r, &[4, 9], -6.0, 6.0)], |t| t[0].gelu());
    let bias = rand_range(&mut r, &[9], -2.0, 2.0);
    gradcheck("bias_gelu wide", &[rand_range(&mut r, &[4, 9], -4.0, 4.0), bias], |t| {
        t[0].bias_activation(&t[1], Activation::Gelu)
    });
}

#[test]
fn reductions() {
    let mut r = rng();
    let x = randn(&mut r, &[2, 3, 5]);
    gradcheck("sum_all", &[x.clone()], |t| t[0].sum_all());
    gradcheck("mean_all", &[x.clone()], |t| t[0].mean_all());
    for dim in 0..3 {
        gradcheck("sum_dim", &[x.clone()], |t| t[0].sum_dim(dim));
        gradcheck("mean_dim", &[x.clone()], |t| t[0].mean_dim(dim));
    }
    gradcheck("sum_all of one", &[randn(&mut r, &[1])], |t| t[0].sum_all());
}

#[test]
fn layout_ops() {
    let mut r = rng();
    let x = randn(&mut r, &[2, 3, 5]);
    gradcheck("reshape", &[x.clone()], |t| t[0].reshape([5, 6]));
    gradcheck("transpose", &[x.clone()], |t| t[0].transpose(0, 2));
    gradcheck("permute", &[x.clone()], |t| t[0].permute(&[2, 0, 1]));
    gradcheck("slice", &[x.clone()], |t| t[0].slice(1, 1, 2));
    gradcheck("slice len 1", &[x.clone()], |t| t[0].slice(2, 4, 1));
    let y = randn(&mut r, &[2, 1, 5]);
    gradcheck("concat dim 1", &[x.clone(), y], |t| ops::concat(&[&t[0], &t[1]], 1));
    let z = randn(&mut r, &[1, 3, 5]);
    gradcheck("concat dim 0", &[x, z], |t| ops::concat(&[&t[0], &t[1], &t[0]], 0));
}

#[test]
fn embedding_lookup() {
    let mut r = rng();
    let table = randn(&mut r, &[7, 5]);
    gradcheck("index_rows repeated ids", &[table.clone()], |t| t[0].index_rows(&[3, 0, 3, 6, 3]));
    gradcheck("index_rows single", &[randn(&mut r, &[1, 1])], |t| t[0].index_rows(&[0, 0]));
}

#[test]
fn layer_norm_plain_and_fused() {
    let mut r = rng();
    for shape in [vec![3, 7], vec![2, 3, 5], vec![1, 1], vec![4, 1]] {
        let d = *shape.last().unwrap();
        let (x, res) = (randn(&mut r, &shape), randn(&mut r, &shape));
        let (g, b) = (randn(&mut r, &[d]), randn(&mut r, &[d]));
        for eps in [1e-5, 1e-12] {
            gradcheck("layer_norm", &[x.clone(), g.clone(), b.clone()], |t| t[0].layer_norm(&t[1], &t[2], eps));
        }
        // Both outputs used, with different weights, as in a pre-norm block.
        gradcheck("add_layer_norm", &[x, res, g, b], |t| {
            let (sum, y) = t[0].add_layer_norm(&t[1], &t[2], &t[3], 1e-5)?;
            sum.scale(0.7)?.add(&y)
        });
    }
}

#[test]
fn layer_norm_two_segments_plain_and_fused() {
    let mut r = rng();
    // (shape, first row of the second segment): a split inside, at an odd row, and either
    // segment empty.
    for (shape, split) in [(vec![5, 7], 2), (vec![2, 3, 5], 3), (vec![4, 3], 0), (vec![4, 3], 4), (vec![1, 1], 1)] {
        let d = *shape.last().unwrap();
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let (x, res) = (randn(&mut r, &shape), randn(&mut r, &shape));
        let (g, b, g2, b2) = (randn(&mut r, &[d]), randn(&mut r, &[d]), randn(&mut r, &[d]), randn(&mut r, &[d]));
        let affine = |t: &[Tensor]| LnAffine::new(&t[0], &t[1]).with_second(split, &t[2], &t[3]);
        let name = format!("layer_norm {shape:?} split at {split}");
        gradcheck(&name, &[x.clone(), g.clone(), b.clone(), g2.clone(), b2.clone()], |t| {
            t[0].layer_norm_segments(&affine(&t[1..]), 1e-12)
        });
        gradcheck(&format!("add_{name}"), &[x.clone(), res, g.clone(), b.clone(), g2.clone(), b2.clone()], |t| {
            let (sum, y) = t[0].add_layer_norm_segments(&t[1], &affine(&t[2..]), 1e-5)?;
            sum.scale(0.7)?.add(&y)
        });
        // Each segment's rows are those of a plain LayerNorm with its own gamma and beta.
        let flat = x.reshape([rows, d]).unwrap();
        let y = flat.layer_norm_segments(&affine(&[g.clone(), b.clone(), g2.clone(), b2.clone()]), 1e-5).unwrap();
        let want = [(0, split, &g, &b), (split, rows - split, &g2, &b2)]
            .map(|(start, len, g, b)| flat.slice(0, start, len).unwrap().layer_norm(g, b, 1e-5).unwrap().to_f64_vec());
        assert_eq!(y.to_f64_vec(), want.concat(), "{name}: segments");
    }
}

#[test]
fn softmax_and_l2_normalize() {
    let mut r = rng();
    for shape in [vec![4, 7], vec![1, 1], vec![2, 3, 5]] {
        gradcheck("softmax", &[randn(&mut r, &shape)], |t| t[0].softmax());
        gradcheck("l2_normalize", &[randn(&mut r, &shape)], |t| t[0].l2_normalize(1e-12));
    }
}

#[test]
fn attention_every_mask() {
    let mut r = rng();
    let masks = [
        AttnMask::none(),
        AttnMask::causal(),
        AttnMask::key_padding(vec![3, 5]),
        AttnMask { causal: true, key_lengths: Some(vec![2, 5]), ..AttnMask::none() },
        AttnMask::key_padding(vec![0, 4]), // sequence 0 is fully masked
    ];
    for mask in masks {
        let qkv = randn(&mut r, &[2, 5, 3 * 12]);
        gradcheck("attention", &[qkv], |t| ops::attention(&t[0], 3, &mask));
    }
    gradcheck("attention len 1", &[randn(&mut r, &[1, 1, 3 * 4])], |t| ops::attention(&t[0], 1, &AttnMask::causal()));
    gradcheck("attention odd", &[randn(&mut r, &[3, 7, 3 * 10])], |t| ops::attention(&t[0], 5, &AttnMask::none()));
}

#[test]
fn infonce_and_cross_entropy() {
    let mut r = rng();
    for (n, d) in [(1, 3), (3, 5), (7, 4)] {
        let img = randn(&mut r, &[n, d]);
        let txt = randn(&mut r, &[n, d]);
        let scale = Tensor::from_vec(vec![0.3f64], [1]).unwrap();
        gradcheck("infonce", &[img.clone(), txt.clone(), scale.clone()], |t| ops::infonce(&t[0], &t[1], &t[2], None));
        // One direction alone (OneR's NCE), the other alone, and unequal weights.
        let weights = [
            ContrastWeights::ROWS,
            ContrastWeights { rows: 0.0, columns: 1.0 },
            ContrastWeights { rows: 0.3, columns: 1.2 },
        ];
        for w in weights {
            gradcheck(&format!("contrast {w:?}"), &[img.clone(), txt.clone(), scale.clone()], |t| {
                ops::contrast(&t[0], &t[1], &t[2], Some(100.0), w)
            });
        }
        // Clamp inactive (exp(0.3) < 100) and active (exp(0.3) > 1.2).
        gradcheck("infonce clamp idle", &[img.clone(), txt.clone(), scale.clone()], |t| {
            ops::infonce(&t[0], &t[1], &t[2], Some(100.0))
        });
        gradcheck("infonce clamped", &[img.clone(), txt.clone(), scale], |t| {
            ops::infonce(&t[0], &t[1], &t[2], Some(1.2))
        });
        // Through normalisation, as CLIP uses it.
        gradcheck("infonce normalised", &[img, txt], |t| {
            let s = Tensor::from_vec(vec![1.0f64], [1])?;
            ops::infonce(&t[0].l2_normalize(1e-12)?, &t[1].l2_normalize(1e-12)?, &s, None)
        });
    }
    for (n, c) in [(1, 1), (4, 7)] {
        let targets = Table::new((0..n).map(|i| (i * 3 % c) as u32).collect());
        gradcheck("cross_entropy", &[randn(&mut r, &[n, c])], |t| ops::cross_entropy(&t[0], &targets));
    }
    // Ignored rows (MLM's padding): no loss, no gradient, the mean over the rest.
    let targets = Table::new(vec![2, ops::IGNORE_TARGET, 0, ops::IGNORE_TARGET, 6]);
    gradcheck("cross_entropy ignoring", &[randn(&mut r, &[5, 7])], |t| ops::cross_entropy(&t[0], &targets));
}

#[test]
fn conv2d_geometries() {
    let mut r = rng();
    let cases = [
        // (input, weight, stride, padding, groups)
        ([2, 3, 7, 6], [4, 3, 3, 3], 2, 1, 1),
        ([1, 4, 5, 5], [4, 1, 3, 3], 1, 1, 4), // depthwise
        ([2, 4, 6, 5], [6, 2, 2, 2], 2, 0, 2), // grouped, kernel = stride
        ([1, 3, 4, 4], [5, 3, 1, 1], 1, 0, 1), // 1x1
        ([1, 1, 1, 1], [1, 1, 1, 1], 1, 0, 1),
        ([1, 2, 8, 8], [2, 1, 4, 4], 4, 0, 2), // lateral-adapter style downsampling
    ];
    for (x, w, stride, padding, groups) in cases {
        let geo = Conv2dGeometry { stride, padding, groups };
        gradcheck("conv2d", &[randn(&mut r, &x), randn(&mut r, &w)], |t| ops::conv2d(&t[0], &t[1], geo));
    }
}

#[test]
fn batch_norm_train_and_eval() {
    let mut r = rng();
    for shape in [[2, 3, 4, 5], [3, 1, 2, 2], [1, 2, 3, 1]] {
        let c = shape[1];
        let x = randn(&mut r, &shape);
        let (g, b) = (randn(&mut r, &[c]), randn(&mut r, &[c]));
        for eps in [1e-5, 1e-6] {
            gradcheck("batch_norm train", &[x.clone(), g.clone(), b.clone()], |t| {
                Ok(ops::batch_norm2d(&t[0], &t[1], &t[2], eps, BatchNormMode::Train)?.0)
            });
        }
        let mean = randn(&mut r, &[c]);
        let var = rand_range(&mut r, &[c], 0.5, 2.0);
        gradcheck("batch_norm eval", &[x, g, b], |t| {
            Ok(ops::batch_norm2d(&t[0], &t[1], &t[2], 1e-5, BatchNormMode::Eval { mean: &mean, var: &var })?.0)
        });
    }
}

/// The fused BatchNorm + ReLU: the ReLU's mask recomputed in the backward must cut exactly the
/// elements the forward cut.
#[test]
fn batch_norm_relu_train_and_eval() {
    let mut r = rng();
    for shape in [[2, 3, 4, 5], [3, 1, 2, 2]] {
        let c = shape[1];
        let x = randn(&mut r, &shape);
        let (g, b) = (randn(&mut r, &[c]), randn(&mut r, &[c]));
        gradcheck("batch_norm_relu train", &[x.clone(), g.clone(), b.clone()], |t| {
            Ok(ops::batch_norm_relu2d(&t[0], &t[1], &t[2], 1e-5, BatchNormMode::Train)?.0)
        });
        let mean = randn(&mut r, &[c]);
        let var = rand_range(&mut r, &[c], 0.5, 2.0);
        gradcheck("batch_norm_relu eval", &[x, g, b], |t| {
            Ok(ops::batch_norm_relu2d(&t[0], &t[1], &t[2], 1e-5, BatchNormMode::Eval { mean: &mean, var: &var })?.0)
        });
    }
}
