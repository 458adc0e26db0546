//! The parameter store and AdamW.

use msclip::autograd;
use msclip::nn::{AdamW, AdamWConfig, ParamGroup, ParamStore};
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
    opt.step(&mut store, &grads, lr, 1.0).unwrap();
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

#[test]
fn grad_scale_multiplies_the_gradient() {
    // Adam is nearly scale-invariant, so use eps = 1 where the gradient's size shows:
    // gradient 2 at scale 0.25 must step exactly like gradient 0.5 at scale 1, and unlike
    // gradient 2 unscaled.
    let run = |g: f64, scale: f64| {
        let mut store = ParamStore::new();
        let p = store.add("p", Tensor::from_vec(vec![1.0f64], [1]).unwrap()).unwrap();
        let config = AdamWConfig { eps: 1.0, ..AdamWConfig::default() };
        let mut opt = AdamW::new(&store, config, vec![group("g", 0.0)], |_, _| 0).unwrap();
        for _ in 0..2 {
            let loss = store.get(p).scale(g).unwrap().sum_all().unwrap();
            let grads = autograd::backward(&loss).unwrap();
            opt.step(&mut store, &grads, 0.1, scale).unwrap();
        }
        store.get(p).item().unwrap()
    };
    assert_eq!(run(2.0, 0.25), run(0.5, 1.0));
    assert!((run(2.0, 0.25) - run(2.0, 1.0)).abs() > 1e-3);
}
