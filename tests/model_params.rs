//! Parameter counts equal the reference tables exactly: the first proof that a preset is
//! the paper's model (reference/msclip-architecture.md section 7).

use msclip::model::{ClipModel, PRESETS, ParamCounts, preset};

fn counts(name: &str) -> ParamCounts {
    ClipModel::new(preset(name).unwrap()).unwrap().counts()
}

#[test]
fn reference_totals() {
    for (name, total) in [
        ("clip-b32", 151_277_313),
        // open_clip 3.3.0's ViT-B-16-quickgelu: a 16 x 16 patchify conv and 197 positions.
        ("clip-b16", 149_620_737),
        // The exact GELU has no parameters: open_clip's ViT-B-32 and ViT-B-16.
        ("clip-b32-gelu", 151_277_313),
        ("clip-b16-gelu", 149_620_737),
        ("msclip-b32", 126_285_313),
        ("msclip-es-b32", 128_436_721),
        ("msclip-s-b32", 132_408_001),
        ("msclip-s-b16", 132_503_617),
    ] {
        assert_eq!(counts(name).total, total, "{name}");
    }
}

#[test]
fn msclip_s_b32_breakdown() {
    let c = counts("msclip-s-b32");
    assert_eq!(c.shared, 77_932_800, "11 x (attn 2,362,368 + MLP 4,722,432)");
    assert_eq!(c.text_only, 45_520_896);
    assert_eq!(c.vision_only, 8_954_304);
    assert_eq!(c.joint, 1);
}

#[test]
fn clip_shares_nothing_and_plain_msclip_shares_twelve_layers() {
    let clip = counts("clip-b32");
    assert_eq!((clip.shared, clip.vision_only, clip.text_only), (0, 87_849_216, 63_428_096));
    assert_eq!(counts("msclip-b32").shared, 12 * 7_084_800);
}

#[test]
fn every_preset_builds_and_single_tower_shares_most() {
    for name in PRESETS {
        let c = counts(name);
        assert_eq!(c.total, c.shared + c.vision_only + c.text_only + c.joint, "{name}");
    }
    let oner = counts("oner-b32");
    // Everything but the embeddings (patchify conv, CLS, positions, ln_pre, token table) is shared.
    assert_eq!(oner.shared, 12 * 7_087_872 + 1_536 + 768 * 512);
    assert!(counts("tiny-oner").shared > counts("tiny-msclip").shared);
    // B/16: a 16 x 16 patchify conv (768 x 3 x 256 instead of x 1024) and 197 positions, not 50.
    let oner_b16 = counts("oner-b16");
    assert_eq!(oner.total, 125_853_697);
    assert_eq!(oner_b16.total, oner.total - 768 * 3 * (1024 - 256) + 768 * (197 - 50));
    assert_eq!(oner_b16.shared, oner.shared);
    assert_eq!(counts("tiny-clip").shared, 0);
}

/// The type embedding adds one vector per modality, each in its own tower, and every token of
/// the modality moves by it: the features change, and its gradient is the sum of the tokens'.
#[test]
fn the_type_embedding_adds_a_vector_per_modality_that_reaches_the_loss() {
    use msclip::autograd;
    use msclip::tensor::{DType, Rng};
    let mut config = preset("tiny-oner").unwrap();
    let plain = ClipModel::new(config.clone()).unwrap().counts();
    config.type_embedding = true;
    let model = ClipModel::new(config.clone()).unwrap();
    let typed = model.counts();
    assert_eq!(typed.total, plain.total + config.vision.width + config.text.width);
    assert_eq!(
        (typed.vision_only, typed.text_only),
        (plain.vision_only + config.vision.width, plain.text_only + config.text.width)
    );

    let (p, mut bufs) = model.init_params(&mut Rng::new(4), DType::F64).unwrap();
    let mut rng = Rng::new(5);
    let size = config.vision.image_size;
    let images = rng.normal_tensor([2, 3, size, size], 1.0, DType::F64);
    let (sot, eot, context) = (config.text.vocab as u32 - 2, config.text.vocab as u32 - 1, config.text.context);
    let mut tokens = vec![0u32; 2 * context];
    for row in tokens.chunks_mut(context) {
        row[..4].copy_from_slice(&[sot, 5, 6, eot]);
    }
    let captions = model.pack_captions(&tokens, None).unwrap();
    let loss = model.contrastive_loss_packed(&p, &mut bufs, &images, &captions, None).unwrap();
    let grads = autograd::backward(&loss).unwrap();
    for name in ["visual.type_embedding", "type_embedding"] {
        let id = p.find(name).unwrap_or_else(|| panic!("{name} is a parameter"));
        let g = grads.get(p.get(id)).unwrap().to_f64_vec();
        assert!(g.iter().any(|v| *v != 0.0), "{name} gets a gradient");
    }
}
