//! The training objectives of `--loss` against their formulas: OneR's cross-modal mixup
//! contrast (XMC), the joint sequence's contrast (CMC) and the contextual invariance contrast
//! (CIC) computed by hand in f64, their gradients (through the mixture, by finite differences;
//! with the mixture as a target, against the same loss on a constant mixture), and weighted sums.

mod common;

use common::{gradcheck, randn};
use msclip::autograd;
use msclip::backend::ContrastWeights;
use msclip::model::{Objectives, PairFeatures};
use msclip::ops::contrast;
use msclip::{Rng, Tensor};

fn unit_rows(t: &Tensor) -> Tensor {
    t.l2_normalize(1e-12).unwrap().detach()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let d = t.dims()[1];
    t.to_f64_vec().chunks(d).map(<[f64]>::to_vec).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// NCE(a, b) by its definition: -(1/n) sum_i log softmax_j(t a_i . b_j)[i].
fn nce(a: &[Vec<f64>], b: &[Vec<f64>], t: f64) -> f64 {
    let n = a.len() as f64;
    let terms = a.iter().enumerate().map(|(i, ai)| {
        let logits: Vec<f64> = b.iter().map(|bj| t * dot(ai, bj)).collect();
        let lse = logits.iter().map(|z| z.exp()).sum::<f64>().ln();
        lse - logits[i]
    });
    terms.sum::<f64>() / n
}

fn objectives(spec: &str) -> Objectives {
    Objectives::parse(spec).unwrap()
}

fn features(img: Tensor, txt: Tensor, joint: Option<Tensor>) -> PairFeatures {
    PairFeatures { img, txt, mixture_from: None, joint, contextual: None, mlm: None, mim: None }
}

#[test]
fn xmc_is_each_modality_against_its_pairs_mixture() {
    let mut rng = Rng::new(7);
    let (n, d) = (6, 5);
    let (img, txt) = (unit_rows(&randn(&mut rng, &[n, d])), unit_rows(&randn(&mut rng, &[n, d])));
    let log_scale = 1.3_f64;
    let scale = Tensor::from_vec(vec![log_scale], [1]).unwrap();
    let (i, t) = (rows(&img), rows(&txt));
    let mixture: Vec<Vec<f64>> = i
        .iter()
        .zip(&t)
        .map(|(a, b)| {
            let sum: Vec<f64> = a.iter().zip(b).map(|(x, y)| x + y).collect();
            let norm = dot(&sum, &sum).sqrt();
            sum.iter().map(|v| v / norm).collect()
        })
        .collect();
    let temperature = log_scale.exp();
    let xmc = nce(&i, &mixture, temperature) + nce(&t, &mixture, temperature);
    let itc = (nce(&i, &t, temperature) + nce(&t, &i, temperature)) / 2.0;
    // CMC and CIC: their own embeddings against the mixture, both ways.
    let (joint, contextual) = (unit_rows(&randn(&mut rng, &[n, d])), unit_rows(&randn(&mut rng, &[n, d])));
    let symmetric = |a: &[Vec<f64>]| (nce(a, &mixture, temperature) + nce(&mixture, a, temperature)) / 2.0;
    let (cmc, cic) = (symmetric(&rows(&joint)), symmetric(&rows(&contextual)));
    let cases = [
        ("xmc", xmc),
        ("itc", itc),
        ("itc=0.5,xmc=2", 0.5 * itc + 2.0 * xmc),
        ("cmc", cmc),
        ("cic", cic),
        ("xmc,cic=0.25", xmc + 0.25 * cic),
    ];
    for (spec, want) in cases {
        let pairs = PairFeatures {
            joint: Some(joint.clone()),
            contextual: Some(contextual.clone()),
            ..features(img.clone(), txt.clone(), None)
        };
        let got = objectives(spec).loss(&pairs, &scale, None).unwrap().item().unwrap();
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{spec}: {got} against {want} by hand");
    }
}

#[test]
fn xmc_gradients_through_the_mixture_match_finite_differences() {
    let mut rng = Rng::new(8);
    for (n, d) in [(2, 3), (5, 4)] {
        let (img, txt) = (randn(&mut rng, &[n, d]), randn(&mut rng, &[n, d]));
        let scale = Tensor::from_vec(vec![0.7f64], [1]).unwrap();
        let (joint, contextual) = (randn(&mut rng, &[n, d]), randn(&mut rng, &[n, d]));
        let specs =
            ["xmc,through-mixture", "itc=0.5,xmc=1.5,through-mixture", "cmc,through-mixture", "cic,through-mixture"];
        for spec in specs {
            let o = objectives(spec);
            gradcheck(spec, &[img.clone(), txt.clone(), scale.clone(), joint.clone(), contextual.clone()], |x| {
                let pairs = PairFeatures {
                    joint: Some(x[3].l2_normalize(1e-12)?),
                    contextual: Some(x[4].l2_normalize(1e-12)?),
                    ..features(x[0].l2_normalize(1e-12)?, x[1].l2_normalize(1e-12)?, None)
                };
                o.loss(&pairs, &x[2], Some(100.0))
            });
        }
    }
}

/// With the mixture a target (the default), the gradients are those of the same loss on a
/// mixture that is a constant.
#[test]
fn xmc_with_the_mixture_as_a_target_sends_no_gradient_through_it() {
    let mut rng = Rng::new(9);
    let (n, d) = (5, 4);
    let leaf = |t: Tensor| unit_rows(&t).set_requires_grad(true);
    let (img, txt) = (leaf(randn(&mut rng, &[n, d])), leaf(randn(&mut rng, &[n, d])));
    let scale = Tensor::from_vec(vec![0.7f64], [1]).unwrap().set_requires_grad(true);
    let loss = objectives("xmc").loss(&features(img.clone(), txt.clone(), None), &scale, None).unwrap();
    let grads = autograd::backward(&loss).unwrap();

    let constant = img.add(&txt).unwrap().l2_normalize(1e-12).unwrap().detach();
    let nce = |rows: &Tensor| contrast(rows, &constant, &scale, None, ContrastWeights::ROWS).unwrap();
    let by_hand = nce(&img).add(&nce(&txt)).unwrap();
    assert_eq!(loss.item().unwrap(), by_hand.item().unwrap());
    let want = autograd::backward(&by_hand).unwrap();
    for (what, t) in [("image", &img), ("text", &txt), ("logit scale", &scale)] {
        let (got, want) = (grads.get(t).unwrap().to_f64_vec(), want.get(t).unwrap().to_f64_vec());
        assert_eq!(got, want, "{what} gradient");
    }
}
