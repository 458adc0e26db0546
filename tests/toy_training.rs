//! A two-layer network learns XOR-arranged clusters (not linearly separable): the whole
//! stack (ops, tape, parameter store, AdamW) working together.

use msclip::autograd;
use msclip::nn::{AdamW, AdamWConfig, ParamGroup, ParamStore, Update};
use msclip::ops;
use msclip::{DType, Rng, Table, Tensor};

/// Points around (+-1, +-1); the label is 1 where x and y have the same sign.
fn xor_clusters(rng: &mut Rng, n: usize) -> (Tensor, Vec<u32>) {
    let mut points = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let (sx, sy) = (if rng.uniform() < 0.5 { -1.0 } else { 1.0 }, if rng.uniform() < 0.5 { -1.0 } else { 1.0 });
        points.push(sx + 0.3 * rng.normal());
        points.push(sy + 0.3 * rng.normal());
        labels.push(u32::from(sx * sy > 0.0));
    }
    (Tensor::from_f64(&points, [n, 2], DType::F32).unwrap(), labels)
}

#[test]
fn two_layer_network_loss_falls() {
    let mut rng = Rng::new(2024);
    let mut store = ParamStore::new();
    let w1 = store.add("fc1.weight", rng.normal_tensor([16, 2], 0.5, DType::F32)).unwrap();
    let b1 = store.add("fc1.bias", Tensor::zeros([16], DType::F32)).unwrap();
    let w2 = store.add("fc2.weight", rng.normal_tensor([2, 16], 0.5, DType::F32)).unwrap();
    let b2 = store.add("fc2.bias", Tensor::zeros([2], DType::F32)).unwrap();
    let groups = vec![ParamGroup { name: "all".into(), weight_decay: 0.01, lr_scale: 1.0 }];
    let mut opt = AdamW::new(&store, AdamWConfig::default(), groups, |_, _| 0).unwrap();

    let (x, y) = xor_clusters(&mut rng, 128);
    let forward = |store: &ParamStore| {
        let h = x.linear(store.get(w1), Some(store.get(b1))).unwrap().quick_gelu().unwrap();
        h.linear(store.get(w2), Some(store.get(b2))).unwrap()
    };
    let mut losses = Vec::new();
    for _ in 0..150 {
        let loss = ops::cross_entropy(&forward(&store), &Table::new(y.clone())).unwrap();
        losses.push(loss.item().unwrap());
        let grads = autograd::backward(&loss).unwrap();
        opt.step(&mut store, None, &grads, Update::at(0.03)).unwrap();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 0.5, "starts near chance, got {first}");
    assert!(last < 0.1 * first, "loss must fall by 10x: {first} -> {last}");

    let logits = autograd::no_grad(|| forward(&store)).to_f64_vec();
    let correct = y.iter().enumerate().filter(|&(i, &label)| {
        let predicted = u32::from(logits[2 * i + 1] > logits[2 * i]);
        predicted == label
    });
    assert!(correct.count() >= 124, "fits the training clusters");
}
