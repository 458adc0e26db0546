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
