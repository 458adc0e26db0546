//! The towers run end to end, share what the config says they share, and the shared
//! weights receive the sum of both modalities' gradients.

use msclip::autograd;
use msclip::model::{ClipModel, Mode, Role, preset};
use msclip::{DType, Rng, Tensor};

/// Token rows shaped like real captions: SOT, some words, EOT (the largest id), padding.
fn tokens(rng: &mut Rng, batch: usize, context: usize, vocab: usize) -> Vec<u32> {
    let (sot, eot) = (vocab as u32 - 2, vocab as u32 - 1);
    (0..batch)
        .flat_map(|b| {
            let words = 1 + (b * 3) % (context - 2);
            let mut row = vec![0u32; context];
            row[0] = sot;
            for slot in row.iter_mut().skip(1).take(words) {
                *slot = 1 + rng.below(vocab - 3) as u32;
            }
            row[words + 1] = eot;
            row
        })
        .collect()
}

#[test]
fn every_tiny_preset_encodes_to_unit_features() {
    for name in ["tiny", "tiny-clip", "tiny-msclip", "tiny-msclip-s", "tiny-oner"] {
        let model = ClipModel::new(preset(name).unwrap()).unwrap();
        let mut rng = Rng::new(3);
        let (p, mut bufs) = model.init_params(&mut rng, DType::F32).unwrap();
        let c = &model.config;
        let images = rng.normal_tensor([3, 3, c.vision.image_size, c.vision.image_size], 1.0, DType::F32);
        let img = model.encode_image(&p, &mut bufs, &images, Mode::Eval).unwrap();
        let txt = model.encode_text(&p, &tokens(&mut rng, 3, c.text.context, c.text.vocab)).unwrap();
        for f in [&img, &txt] {
            assert_eq!(f.dims(), &[3, c.embed_dim], "{name}");
            for row in f.to_f64_vec().chunks(c.embed_dim) {
                let norm: f64 = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{name}: feature norm {norm}");
            }
        }
    }
}

#[test]
fn shared_weights_get_the_sum_of_image_and_text_gradients() {
    let model = ClipModel::new(preset("tiny-msclip-s").unwrap()).unwrap();
    let mut rng = Rng::new(5);
    let (p, bufs) = model.init_params(&mut rng, DType::F64).unwrap();
    let c = &model.config;
    let images = rng.normal_tensor([2, 3, c.vision.image_size, c.vision.image_size], 1.0, DType::F64);
    let toks = tokens(&mut rng, 2, c.text.context, c.text.vocab);
    let probe = rng.normal_tensor([2, c.embed_dim], 1.0, DType::F64);
    let grads_of = |use_image: bool, use_text: bool| {
        let mut b = bufs.clone();
        let mut loss = Tensor::zeros([1], DType::F64);
        if use_image {
            let f = model.encode_image(&p, &mut b, &images, Mode::Train).unwrap();
            loss = loss.add(&f.mul(&probe).unwrap().sum_all().unwrap()).unwrap();
        }
        if use_text {
            let f = model.encode_text(&p, &toks).unwrap();
            loss = loss.add(&f.mul(&probe).unwrap().exp().unwrap().sum_all().unwrap()).unwrap();
        }
        autograd::backward(&loss).unwrap()
    };
    let (both, image, text) = (grads_of(true, true), grads_of(true, false), grads_of(false, true));
    let mut checked = 0;
    for (id, spec) in p.ids().zip(&model.spec.params) {
        let t = p.get(id);
        let get = |g: &autograd::Gradients| g.get(t).map(|x| x.to_f64_vec()).unwrap_or_else(|| vec![0.0; t.numel()]);
        let (b, i, x) = (get(&both), get(&image), get(&text));
        let used_by_image = i.iter().any(|&v| v != 0.0);
        let used_by_text = x.iter().any(|&v| v != 0.0);
        match spec.role {
            Role::Shared => assert!(used_by_image && used_by_text, "{} is shared but not used by both", spec.name),
            Role::Vision => assert!(!used_by_text, "{} is vision-only but text uses it", spec.name),
            Role::Text => assert!(!used_by_image, "{} is text-only but vision uses it", spec.name),
            Role::Joint => {}
        }
        for ((b, i), x) in b.iter().zip(&i).zip(&x) {
            assert!((b - (i + x)).abs() <= 1e-10 * (1.0 + b.abs()), "{}: {b} != {i} + {x}", spec.name);
        }
        checked += usize::from(spec.role == Role::Shared);
    }
    assert_eq!(checked, 3 * 8, "3 shared blocks x (in_proj w, b, out_proj w, b, c_fc w, b, c_proj w, b)");
}

#[test]
fn text_trimming_is_exact() {
    // Padding after the longest EOT is dropped before the transformer; the features must not
    // change when extra padding (a longer context) is present.
    let mut cfg = preset("tiny").unwrap();
    let model = ClipModel::new(cfg.clone()).unwrap();
    let mut rng = Rng::new(9);
    let (p, _) = model.init_params(&mut rng, DType::F64).unwrap();
    let toks = tokens(&mut rng, 4, cfg.text.context, cfg.text.vocab);
    let full = model.encode_text(&p, &toks).unwrap().to_f64_vec();
    // Recompute row by row: each row trimmed to its own length.
    for (b, row) in toks.chunks(cfg.text.context).enumerate() {
        let single = model.encode_text(&p, row).unwrap().to_f64_vec();
        let e = cfg.embed_dim;
        for (a, s) in full[b * e..(b + 1) * e].iter().zip(&single) {
            assert!((a - s).abs() < 1e-12);
        }
    }
    cfg.text.context += 1;
    assert!(ClipModel::new(cfg).is_ok());
}

#[test]
fn bad_inputs_are_errors() {
    let model = ClipModel::new(preset("tiny").unwrap()).unwrap();
    let mut rng = Rng::new(1);
    let (p, mut bufs) = model.init_params(&mut rng, DType::F32).unwrap();
    let wrong = rng.normal_tensor([2, 3, 16, 16], 1.0, DType::F32);
    let err = model.encode_image(&p, &mut bufs, &wrong, Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 16, 16]") && err.contains("48"), "{err}");
    let err = model.encode_text(&p, &[1, 2, 3]).unwrap_err().to_string();
    assert!(err.contains("encode_text"), "{err}");
    let mut too_big = vec![0u32; 32];
    too_big[0] = 5000;
    let err = model.encode_text(&p, &too_big).unwrap_err().to_string();
    assert!(err.contains("5000"), "{err}");
}
