//! The towers run end to end, share what the config says they share, and the shared
//! weights receive the sum of both modalities' gradients.

mod common;

use common::{assert_close, captions_ending_at};
use msclip::autograd;
use msclip::backend::AttnMask;
use msclip::model::{ClipModel, Mode, Role, TextEncoder, preset};
use msclip::nn::ParamStore;
use msclip::ops;
use msclip::text::eot_positions;
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

/// The text tower as CLIP runs it, written here from the checkpoint names: every caption padded
/// to the full context in a batch row of its own, causal mask, argmax pooling; or, for OneR's
/// bidirectional encoder, a key-padding mask at each caption's end (its EOT, or the whole row
/// when it was cut before its EOT) and the first token pooled. A shared weight resolves to the
/// vision tower's name (MS-CLIP's attention and MLP, OneR's blocks and head).
fn padded_text_reference(model: &ClipModel, p: &ParamStore, tokens: &[u32]) -> Tensor {
    let c = &model.config;
    let (context, width, batch) = (c.text.context, c.text.width, tokens.len() / c.text.context);
    let get = |names: &[String]| p.get(names.iter().find_map(|n| p.find(n)).expect("a checkpoint name"));
    let block = |i: usize, what: &str| {
        get(&[format!("transformer.resblocks.{i}.{what}"), format!("visual.transformer.resblocks.{i}.{what}")])
    };
    let linear = |x: &Tensor, i: usize, name: &str| {
        x.linear(block(i, &format!("{name}.weight")), Some(block(i, &format!("{name}.bias")))).unwrap()
    };
    let norm = |x: &Tensor, i: usize, name: &str| {
        x.layer_norm(block(i, &format!("{name}.weight")), block(i, &format!("{name}.bias")), c.ln_eps).unwrap()
    };
    let table = |name: &str| get(&[name.into()]);
    let x = table("token_embedding.weight").index_rows(tokens).unwrap().reshape([batch, context, width]).unwrap();
    let mut x = x.add_broadcast(table("positional_embedding")).unwrap();
    let eots = eot_positions(tokens, context).unwrap();
    let (mask, pooled_positions): (AttnMask, Vec<usize>) = match c.text.encoder {
        TextEncoder::Causal => (AttnMask::causal(), eots),
        TextEncoder::Bidirectional => {
            let lengths = eots.iter().map(|&e| if e == 0 { context } else { e + 1 }).collect();
            (AttnMask::key_padding(lengths), vec![0; batch])
        }
    };
    for i in 0..c.text.layers {
        let qkv = norm(&x, i, "ln_1").linear(block(i, "attn.in_proj_weight"), Some(block(i, "attn.in_proj_bias")));
        let attn = ops::attention(&qkv.unwrap(), c.text.heads, &mask).unwrap();
        x = x.add(&linear(&attn, i, "attn.out_proj")).unwrap();
        let hidden = linear(&norm(&x, i, "ln_2"), i, "mlp.c_fc").quick_gelu().unwrap();
        x = x.add(&linear(&hidden, i, "mlp.c_proj")).unwrap();
    }
    let rows: Vec<u32> = pooled_positions.iter().enumerate().map(|(b, &e)| (b * context + e) as u32).collect();
    let pooled = x.reshape([batch * context, width]).unwrap().index_rows(&rows).unwrap();
    let head = |what: &str| get(&[format!("ln_final.{what}"), format!("head.ln.{what}")]);
    let normed = pooled.layer_norm(head("weight"), head("bias"), c.ln_eps).unwrap();
    normed.matmul(get(&["text_projection".into(), "head.proj".into()])).unwrap().l2_normalize(1e-12).unwrap()
}

#[test]
fn packed_text_matches_the_padded_reference() {
    // Captions trimmed through their EOT and packed into one varlen sequence must give the
    // features and parameter gradients of the padded computation, to f64 rounding: lengths from
    // the full context down to one token (a caption cut before its EOT pools at SOT), with junk
    // ids after each EOT that only the padded reference sees. tiny-oner's text is bidirectional.
    for name in ["tiny", "tiny-clip", "tiny-msclip", "tiny-msclip-s", "tiny-oner"] {
        let model = ClipModel::new(preset(name).unwrap()).unwrap();
        let c = &model.config;
        let mut rng = Rng::new(9);
        let (p, _) = model.init_params(&mut rng, DType::F64).unwrap();
        let ends = [c.text.context - 1, 1, 0, 7, 2, c.text.context / 2 + 3];
        let toks = captions_ending_at(&mut rng, &ends, c.text.context, c.text.vocab);
        let probe = rng.normal_tensor([ends.len(), c.embed_dim], 1.0, DType::F64);
        let run = |features: Tensor| {
            let grads = autograd::backward(&features.mul(&probe).unwrap().sum_all().unwrap()).unwrap();
            (features.to_f64_vec(), grads)
        };
        let (packed, packed_grads) = run(model.encode_text(&p, &toks).unwrap());
        let (padded, padded_grads) = run(padded_text_reference(&model, &p, &toks));
        assert_close(&format!("{name}: features"), &packed, &padded, 1e-12, 1e-12);
        let mut text_params = 0;
        for id in p.ids() {
            let (got, want) = (packed_grads.get(p.get(id)), padded_grads.get(p.get(id)));
            assert_eq!(got.is_some(), want.is_some(), "{name}: gradient presence of {}", p.name(id));
            let (Some(got), Some(want)) = (got, want) else { continue };
            assert_close(
                &format!("{name}: gradient of {}", p.name(id)),
                &got.to_f64_vec(),
                &want.to_f64_vec(),
                1e-12,
                1e-10,
            );
            text_params += 1;
        }
        // Per layer two LayerNorms and the attention and MLP linears; two tables and the head.
        assert_eq!(text_params, c.text.layers * 12 + 5, "{name}: parameters with a text gradient");
    }
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
