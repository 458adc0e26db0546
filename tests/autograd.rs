//! The tape: accumulation into shared weights, no_grad, tape lifetime, determinism.

mod common;

use common::{assert_close, randn};
use msclip::autograd::{self, no_grad};
use msclip::backend::AttnMask;
use msclip::ops;
use msclip::{DType, Rng, Tensor};

#[test]
fn shared_weight_receives_the_sum_of_both_uses() {
    // One weight used by two "towers", as MS-CLIP shares attention and MLP weights.
    let mut r = Rng::new(7);
    let w = randn(&mut r, &[4, 3]).set_requires_grad(true);
    let (img, txt) = (randn(&mut r, &[5, 3]), randn(&mut r, &[2, 3]));
    let grad_of = |use_img: bool, use_txt: bool| -> Vec<f64> {
        let mut loss = Tensor::zeros([1], DType::F64);
        if use_img {
            loss = loss.add(&img.linear(&w, None).unwrap().quick_gelu().unwrap().sum_all().unwrap()).unwrap();
        }
        if use_txt {
            loss = loss.add(&txt.linear(&w, None).unwrap().exp().unwrap().sum_all().unwrap()).unwrap();
        }
        autograd::backward(&loss).unwrap().get(&w).unwrap().to_f64_vec()
    };
    let (both, img_only, txt_only) = (grad_of(true, true), grad_of(true, false), grad_of(false, true));
    let sum: Vec<f64> = img_only.iter().zip(&txt_only).map(|(a, b)| a + b).collect();
    assert_close("shared grad", &both, &sum, 1e-12, 1e-12);
    assert!(img_only.iter().zip(&both).any(|(a, b)| a != b), "the text use must contribute");
}

#[test]
fn no_grad_records_nothing() {
    autograd::clear_tape();
    let w = Tensor::full([3], 2.0, DType::F64).set_requires_grad(true);
    let y = no_grad(|| w.mul(&w).unwrap().sum_all().unwrap());
    assert!(!y.requires_grad());
    assert_eq!(autograd::tape_len(), 0);
    assert!(autograd::grad_enabled(), "no_grad restores the previous state");
    let err = autograd::backward(&y).unwrap_err().to_string();
    assert!(err.contains("backward"), "{err}");
}

#[test]
fn backward_consumes_the_tape_and_constants_get_no_gradient() {
    autograd::clear_tape();
    let w = Tensor::full([2, 2], 0.5, DType::F64).set_requires_grad(true);
    let c = Tensor::full([2, 2], 3.0, DType::F64);
    let loss = w.mul(&c).unwrap().sum_all().unwrap();
    assert!(autograd::tape_len() >= 2);
    let grads = autograd::backward(&loss).unwrap();
    assert_eq!(autograd::tape_len(), 0);
    assert_eq!(grads.get(&w).unwrap().to_f64_vec(), vec![3.0; 4]);
    assert!(grads.get(&c).is_none());
    let err = autograd::backward(&w.sum_dim(0).unwrap()).unwrap_err().to_string();
    assert!(err.contains("one element") && err.contains("[2]"), "{err}");
}

/// A small transformer-style step: gradients of every weight, as raw bits.
fn one_step_gradients(seed: u64) -> Vec<Vec<u64>> {
    let mut r = Rng::new(seed);
    let x = r.normal_tensor([3, 7, 16], 1.0, DType::F32);
    let params: Vec<Tensor> = [vec![48, 16], vec![48], vec![16], vec![16], vec![16, 16]]
        .iter()
        .map(|s| r.normal_tensor(s.clone(), 0.2, DType::F32).set_requires_grad(true))
        .collect();
    let h = x.layer_norm(&params[2], &params[3], 1e-5).unwrap();
    let qkv = h.linear(&params[0], Some(&params[1])).unwrap();
    let a = ops::attention(&qkv, 4, &AttnMask::causal()).unwrap();
    let y = a.linear(&params[4], None).unwrap().add(&x).unwrap();
    let pooled = y.reshape([21, 16]).unwrap().index_rows(&[6, 10, 14]).unwrap();
    let feats = pooled.l2_normalize(1e-12).unwrap();
    let other = feats.scale(-1.0).unwrap().exp().unwrap().l2_normalize(1e-12).unwrap();
    let scale = Tensor::scalar(1.0, DType::F32).set_requires_grad(true);
    let loss = ops::infonce(&feats, &other, &scale, None).unwrap();
    let grads = autograd::backward(&loss).unwrap();
    params
        .iter()
        .map(|p| grads.get(p).unwrap().cpu_slice::<f32>().unwrap().iter().map(|v| v.to_bits() as u64).collect())
        .collect()
}

#[test]
fn same_seed_and_threads_give_bit_identical_gradients() {
    let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
    let (p2a, p2b) = (pool(2), pool(2));
    let first = p2a.install(|| one_step_gradients(11));
    let second = p2b.install(|| one_step_gradients(11));
    assert_eq!(first, second);
    // Our reductions never split one sum across threads, so here (and at these sizes, for
    // the gemm crate too) even the thread count does not change a bit.
    assert_eq!(pool(1).install(|| one_step_gradients(11)), first);
    assert_ne!(one_step_gradients(12), first);
}

#[test]
fn reshape_is_a_view_and_updates_copy_on_write() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
    let view = x.reshape([3, 2]).unwrap();
    assert!(view.shares_storage_with(&x), "reshape must not copy");
    assert!(!x.transpose(0, 1).unwrap().shares_storage_with(&x), "a transpose is a copy");
    // Writing through one alias copies first: the other never sees the write.
    let mut written = view.clone();
    written.cpu_slice_mut::<f32>().unwrap()[0] = 100.0;
    assert_eq!(x.to_f64_vec()[0], 1.0);
    assert_eq!(view.to_f64_vec()[0], 1.0);
    assert_ne!(written.id(), view.id(), "a copied value gets its own id");
}

#[test]
fn a_watched_gradient_is_reported_as_soon_as_it_is_final() {
    // loss = sum(gelu(x * a) * b * a): `a` is taken by the first op and again later, `b` only
    // by a later op; `unused` by none.
    let mut r = Rng::new(11);
    let leaf = |r: &mut Rng| randn(r, &[3, 2]).set_requires_grad(true);
    let (x, a, b, unused) = (leaf(&mut r), leaf(&mut r), leaf(&mut r), leaf(&mut r));
    let loss_of = || x.mul(&a).unwrap().gelu().unwrap().mul(&b).unwrap().mul(&a).unwrap().sum_all().unwrap();
    let plain = autograd::backward(&loss_of()).unwrap();
    let mut reports = Vec::new();
    let watched = [a.id(), b.id(), unused.id()];
    let grads = autograd::backward_watching(&loss_of(), &watched, |grads, id| {
        // Whether `a`'s gradient exists yet shows how far the backward has come.
        let a_so_far = grads.get(&a).map(|g| g.to_f64_vec());
        reports.push((id, grads.get_id(id).map(|g| g.to_f64_vec()), a_so_far));
        Ok(())
    })
    .unwrap();
    let final_of = |t: &Tensor| Some(plain.get(t).unwrap().to_f64_vec());
    // `b` first, while `a` holds only the part from its later use; then `a`, complete.
    assert_eq!(reports.len(), 2, "the unused leaf is never reported");
    assert_eq!((reports[0].0, &reports[0].1), (b.id(), &final_of(&b)));
    assert!(reports[0].2.is_some() && reports[0].2 != final_of(&a), "b is reported before a's first use runs");
    assert_eq!((reports[1].0, &reports[1].1), (a.id(), &final_of(&a)));
    for t in [&x, &a, &b] {
        assert_eq!(grads.get(t).unwrap().to_f64_vec(), plain.get(t).unwrap().to_f64_vec());
    }
}
