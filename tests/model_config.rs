//! Impossible configurations are refused with the reason.

use msclip::model::{ClipModel, Sharing, preset};

fn error_of(edit: impl FnOnce(&mut msclip::model::ModelConfig)) -> String {
    let mut config = preset("tiny").unwrap();
    edit(&mut config);
    ClipModel::new(config).unwrap_err().to_string()
}

#[test]
fn impossible_configs_are_errors() {
    assert!(error_of(|c| c.vision.heads = 3).contains("not divisible by 3 heads"));
    assert!(error_of(|c| c.text.width = 64).contains("shared weights need equal widths"));
    assert!(error_of(|c| c.text.layers = 5).contains("equal depths"));
    assert!(error_of(|c| c.vision.image_size = 50).contains("not a multiple"));
    assert!(error_of(|c| c.text.unshared_first_layer = false).contains("text layer 0 has no partner"));
    assert!(error_of(|c| c.text.context = 1).contains("too small"));
    // The same widths are fine without sharing.
    let mut clip = preset("tiny-clip").unwrap();
    clip.text.width = 64;
    clip.text.heads = 2;
    assert_eq!(clip.sharing, Sharing::None);
    assert!(ClipModel::new(clip).is_ok());
}
