//! Shared test helpers: seeded random tensors and the finite-difference gradient check.
#![allow(dead_code)] // each test binary uses its own subset

pub mod files;
pub mod gpu;
pub mod reference;
pub mod world;

use msclip::autograd::{self, Gradients, no_grad};
use msclip::model::Buffers;
use msclip::nn::ParamStore;
use msclip::{DType, Result, Rng, Tensor};

/// The shapes-world recipe the training tests' bounds were measured with: captions that always
/// name the colour and scenes not grouped. The default's colour dropout and hard-negative
/// groups (since 2026-12-05) keep a small batch near ln(batch) for longer; these tests are
/// about the training loop, not the recipe.
pub fn plain_recipe(config: &mut msclip::train::TrainConfig) {
    config.data.colour_dropout = 0.0;
    config.data.hard_negative_group = 1;
}

/// A seeded N(0, 1) f64 tensor.
pub fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    rng.normal_tensor(shape.to_vec(), 1.0, DType::F64)
}

/// A seeded f64 tensor with entries in [lo, hi).
pub fn rand_range(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
    Tensor::from_f64(&data, shape.to_vec(), DType::F64).unwrap()
}

/// `|a - b| <= atol + rtol * |b|` element-wise, and never NaN.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            !a.is_nan() && !b.is_nan() && (a - b).abs() <= atol + rtol * b.abs(),
            "{what}: element {i}: got {a}, want {b} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Most elements perturbed per input; larger inputs are sampled at a fixed stride.
const MAX_PROBES: usize = 64;
const STEP: f64 = 1e-6;
/// Bound on |analytic - numeric| / max(1, |analytic|, |numeric|). With a step of 1e-6 in
/// f64 the difference quotient's rounding error is ~1e-10 of the objective, so real
/// gradient bugs (off by a factor, a missing term) are orders of magnitude above it.
const TOLERANCE: f64 = 1e-6;

/// Checks the analytic gradient of `f` against central finite differences in f64.
///
/// The scalar checked is `sum(f(inputs) * w)` with a fixed random `w`, so every output
/// element contributes with a different weight (a plain sum would hide errors that cancel).
pub fn gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().set_requires_grad(true)).collect();
    let out = f(&leaves).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let mut rng = Rng::new(0x5eed);
    let weights = randn(&mut rng, out.dims());
    let objective = |out: &Tensor| -> f64 { out.mul(&weights).unwrap().sum_all().unwrap().item().unwrap() };

    let loss = out.mul(&weights).unwrap().sum_all().unwrap();
    let grads = autograd::backward(&loss).unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));

    for (k, leaf) in leaves.iter().enumerate() {
        let analytic = grads.get(leaf).map(|g| g.to_f64_vec()).unwrap_or_else(|| vec![0.0; leaf.numel()]);
        assert_eq!(analytic.len(), leaf.numel(), "{name}: input {k}: gradient has the wrong size");
        let base = leaf.to_f64_vec();
        let stride = base.len().div_ceil(MAX_PROBES).max(1);
        for i in (0..base.len()).step_by(stride) {
            let eval_at = |delta: f64| -> f64 {
                let mut moved = base.clone();
                moved[i] += delta;
                let perturbed = Tensor::from_f64(&moved, leaf.dims().to_vec(), DType::F64).unwrap();
                let args: Vec<Tensor> = leaves
                    .iter()
                    .enumerate()
                    .map(|(j, t)| if j == k { perturbed.clone() } else { t.clone() })
                    .collect();
                no_grad(|| objective(&f(&args).unwrap()))
            };
            let numeric = (eval_at(STEP) - eval_at(-STEP)) / (2.0 * STEP);
            let a = analytic[i];
            assert!(
                (a - numeric).abs() <= TOLERANCE * a.abs().max(numeric.abs()).max(1.0),
                "{name}: input {k} element {i}: analytic {a}, numeric {numeric}"
            );
        }
    }
}

/// Caption rows whose pooled token sits at `ends[b]`: SOT, random word ids, EOT (the largest id)
/// at `ends[b]` and more random ids after it, which the causal mask must keep from the pooled
/// token. An end of 0 is a caption cut before its EOT: it pools at SOT, a sequence of one token.
pub fn captions_ending_at(rng: &mut Rng, ends: &[usize], context: usize, vocab: usize) -> Vec<u32> {
    let (sot, eot) = (vocab as u32 - 2, vocab as u32 - 1);
    ends.iter()
        .flat_map(|&end| {
            let mut row: Vec<u32> = (0..context).map(|_| 1 + rng.below(vocab - 3) as u32).collect();
            row[0] = sot;
            if end > 0 {
                row[end] = eot;
            }
            row
        })
        .collect()
}

/// ||a - b|| / ||b|| over all elements.
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm.max(1e-300)).sqrt()
}

/// Every parameter has a gradient in `got` exactly where `reference` has one, within `rtol` of
/// it (relative norm); returns the worst (relative error, parameter name).
pub fn assert_gradients_match(
    what: &str,
    reference: (&ParamStore, &Gradients),
    got: (&ParamStore, &Gradients),
    rtol: f64,
) -> (f64, String) {
    assert_gradients_match_by(what, reference, got, |_| rtol)
}

/// [`assert_gradients_match`] with a tolerance per parameter, `rtol_of(name)`.
pub fn assert_gradients_match_by(
    what: &str,
    reference: (&ParamStore, &Gradients),
    got: (&ParamStore, &Gradients),
    rtol_of: impl Fn(&str) -> f64,
) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for id in reference.0.ids() {
        let pname = reference.0.name(id);
        let want = reference.1.get(reference.0.get(id)).map(|g| g.to_f64_vec());
        let have = got.1.get(got.0.get(id)).map(|g| g.to_f64_vec());
        assert_eq!(want.is_some(), have.is_some(), "{what}: gradient presence of {pname}");
        let (Some(want), Some(have)) = (want, have) else { continue };
        let err = relative_error(&have, &want);
        let rtol = rtol_of(pname);
        assert!(err <= rtol, "{what}: gradient of {pname} off by {err:.2e} (relative norm, allowed {rtol:.0e})");
        if err > worst.0 {
            worst = (err, pname.to_string());
        }
    }
    worst
}

/// `buffers` (a model's batch-norm statistics) converted to `dtype`, for an f64 reference step.
pub fn buffers_as(buffers: &Buffers, dtype: DType) -> Buffers {
    let mut out = buffers.clone();
    for (name, value) in buffers.iter() {
        out.set(out.find(name).unwrap(), value.to_dtype(dtype).unwrap());
    }
    out
}
