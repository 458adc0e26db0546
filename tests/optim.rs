//! The parameter store and AdamW.

use msclip::autograd;
use msclip::nn::{AdamW, AdamWConfig, ParamGroup, ParamId, ParamStore, Update};
use msclip::{DType, Tensor};

fn group(name: &str, weight_decay: f64) -> ParamGroup {
    ParamGroup { name: name.into(), weight_decay, lr_scale: 1.0 }
}

#[test]
fn first_adamw_step_matches_the_formula() {
    let mut store = ParamStore::new();
    let w = store.add("w", Tensor::from_vec(vec![1.0f64, -2.0, 0.5], [3]).unwrap()).unwrap();
    let b = store.add("b", Tensor::from_vec(vec![0.25f64], [1]).unwrap()).unwrap();
    let mut opt =
        AdamW::new(&store, AdamWConfig::default(), vec![group("decay", 0.1), group("no_decay", 0.0)], |_, t| {
            usize::from(t.numel() == 1)
        })
        .unwrap();
    // loss = sum(w * c) + 3 b: constant gradients c and 3.
    let c = Tensor::from_vec(vec![0.5f64, -1.0, 2.0], [3]).unwrap();
    let loss = store.get(w).mul(&c).unwrap().sum_all().unwrap().add(&store.get(b).scale(3.0).unwrap()).unwrap();
    let grads = autograd::backward(&loss).unwrap();
    let lr = 0.01;
    opt.step(&mut store, None, &grads, Update::at(lr)).unwrap();
    // Step 1: m_hat = g, v_hat = g^2, so the Adam update is lr * g / (|g| + eps).
    let adam = |p: f64, g: f64, wd: f64| p * (1.0 - lr * wd) - lr * g / (g.abs() + 1e-8);
    let want_w: Vec<f64> = [(1.0, 0.5), (-2.0, -1.0), (0.5, 2.0)].iter().map(|&(p, g)| adam(p, g, 0.1)).collect();
    let got_w = store.get(w).to_f64_vec();
    for (g, want) in got_w.iter().zip(&want_w) {
        assert!((g - want).abs() < 1e-15, "{got_w:?} vs {want_w:?}");
    }
    assert!((store.get(b).item().unwrap() - adam(0.25, 3.0, 0.0)).abs() < 1e-15);
    assert_eq!(opt.group_of(b).name, "no_decay");
    assert_eq!(opt.steps(), 1);
}

#[test]
fn duplicate_parameter_names_are_rejected() {
    let mut store = ParamStore::new();
    store.add("visual.proj", Tensor::zeros([2], DType::F32)).unwrap();
    let err = store.add("visual.proj", Tensor::zeros([2], DType::F32)).unwrap_err().to_string();
    assert!(err.contains("visual.proj"), "{err}");
    assert_eq!(store.num_elements(), 2);
}

/// Two AdamW steps of a one-element parameter at loss `g * p` under `update`, with eps = 1
/// (Adam is nearly scale-invariant, and eps = 1 lets a gradient's size show). Returns the
/// parameter and the gradient norm of the last step.
fn two_steps<'a>(g: f64, update: impl Fn(ParamId) -> Update<'a>) -> (f64, f64) {
    let mut store = ParamStore::new();
    let p = store.add("p", Tensor::from_vec(vec![1.0f64], [1]).unwrap()).unwrap();
    let config = AdamWConfig { eps: 1.0, ..AdamWConfig::default() };
    let mut opt = AdamW::new(&store, config, vec![group("g", 0.0)], |_, _| 0).unwrap();
    let mut norm = f64::NAN;
    for _ in 0..2 {
        let loss = store.get(p).scale(g).unwrap().sum_all().unwrap();
        let grads = autograd::backward(&loss).unwrap();
        norm = opt.step(&mut store, None, &grads, update(p)).unwrap().item().unwrap();
    }
    (store.get(p).item().unwrap(), norm)
}

#[test]
fn clipping_scales_gradients_above_the_global_norm_only() {
    let clip = |max| move |_| Update { max_grad_norm: Some(max), ..Update::at(0.1) };
    // Gradient 2 clipped to norm 0.5 steps exactly like gradient 0.5 unclipped, and unlike 2.
    assert_eq!(two_steps(2.0, clip(0.5)).0, two_steps(0.5, |_| Update::at(0.1)).0);
    assert!((two_steps(2.0, clip(0.5)).0 - two_steps(2.0, |_| Update::at(0.1)).0).abs() > 1e-3);
    // Below the limit nothing changes; the norm is reported before clipping.
    assert_eq!(two_steps(0.25, clip(0.5)).0, two_steps(0.25, |_| Update::at(0.1)).0);
    assert_eq!(two_steps(2.0, clip(0.5)).1, 2.0);
}

#[test]
fn a_non_finite_gradient_skips_the_whole_update() {
    let (p, norm) = two_steps(f64::NAN, |_| Update::at(0.1));
    assert!(norm.is_nan());
    assert_eq!(p, 1.0, "the parameter must be left as it was");
}

#[test]
fn clamped_parameters_stay_in_their_range() {
    // A negative gradient pushes p = 1 up by about lr per step; the clamp holds it at 1.05.
    let clamps = [(ParamId::from_index(0), (0.0, 1.05))];
    let (p, _) = two_steps(-3.0, |_| Update { clamps: &clamps, ..Update::at(0.1) });
    assert_eq!(p, 1.05);
}
