//! The shapes world: a procedural image-caption dataset with known ground truth (design:
//! `reference/ecosystem-and-data.md` section 6). Images show one to five copies of a shape,
//! or two different shapes in a relation, with colour, size, position, texture and a
//! background; captions come from a grammar; 16 colour-shape pairs, a few texture-shape
//! pairs, one size-position corner, count 5 and some caption wordings are held out of
//! training, so zero-shot accuracy, retrieval, compositional generalisation and attribute
//! binding are all measurable.
//!
//! Every sample is a pure function of (config, split, index): there are no files, any
//! sample can be made alone, and [`samples`] makes a batch in parallel with the same bytes
//! as one at a time.
//!
//! Files: `config` (knobs), `factors` (the factor enums), `split` (splits, hold-outs, the
//! per-sample random stream), `scene` (drawing what an image shows), `palette` (colour
//! regions), `sdf` (outlines), `render` (rasteriser), `caption` (grammar and carriers),
//! `zero_shot` (evaluation prompts and labels), `preview` and `font` (a captioned PNG grid).

mod caption;
mod config;
mod factors;
mod font;
mod palette;
mod preview;
mod render;
mod scene;
mod sdf;
mod split;
mod zero_shot;

use std::ops::Range;

use rayon::prelude::*;

use self::caption::{Choices, Grammar, Wording};
use crate::tensor::Rng;

pub use self::config::ShapesConfig;
pub use self::factors::{Background, Colour, Position, Relation, ShapeKind, Size, Texture};
pub use self::preview::{PreviewLayout, SheetTile, write_preview, write_sheet};
pub use self::scene::{Layout, Object, Scene};
pub use self::split::{
    HELD_OUT_COUNT, HELD_OUT_TEXTURES, Split, is_held_out, is_held_out_placement, is_held_out_texture,
};
pub use self::zero_shot::{Factor, label_of, zero_shot_factors};

/// One image and its caption, with the scene both were made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// HWC RGB, `image_size * image_size * 3` bytes.
    pub image: Vec<u8>,
    pub caption: String,
    pub scene: Scene,
}

/// A sample up to its caption choices; `rng` is left where rendering starts, so a caption
/// alone (for a tokenizer corpus) costs no pixels and matches the full sample's caption.
struct Draft {
    scene: Scene,
    grammar: Grammar,
    choices: Choices,
    rng: Rng,
}

impl Draft {
    fn new(cfg: &ShapesConfig, split: Split, index: u64) -> Draft {
        let mut rng = split::sample_rng(cfg.seed, split, index);
        let scene = if split == Split::Train && cfg.hard_negative_group > 1 {
            scene::draw_grouped(cfg, &mut rng, index)
        } else {
            scene::draw(cfg, split, &mut rng)
        };
        let grammar = Grammar {
            wording: if split == Split::UnseenTemplate { Wording::HeldOut } else { Wording::Train },
            textures: cfg.textures,
            counts: cfg.max_count > 1,
            // Binding and relation captions name colour and shape only, so the swapped
            // caption differs from the true one in nothing but the swap.
            keep: if matches!(split, Split::Binding | Split::Relation) { 0.0 } else { 1.0 - cfg.caption_dropout },
            keep_colour: if split == Split::Train { 1.0 - cfg.colour_dropout } else { 1.0 },
        };
        let choices = Choices::draw(&mut rng, &grammar);
        Draft { scene, grammar, choices, rng }
    }

    fn caption_of(&self, scene: &Scene) -> String {
        caption::caption(scene, &self.choices, &self.grammar)
    }

    fn finish(mut self, cfg: &ShapesConfig) -> Sample {
        let caption = self.caption_of(&self.scene);
        let image = render::render(&self.scene, cfg, &mut self.rng);
        Sample { image, caption, scene: self.scene }
    }
}

/// Sample `index` of `split`. The config should have passed [`ShapesConfig::validate`];
/// generation never fails or panics, but out-of-range knobs give meaningless images.
pub fn sample(cfg: &ShapesConfig, split: Split, index: u64) -> Sample {
    Draft::new(cfg, split, index).finish(cfg)
}

/// Samples `range` of `split`, generated in parallel on the rayon pool, in index order.
pub fn samples(cfg: &ShapesConfig, split: Split, range: Range<u64>) -> Vec<Sample> {
    let len = range.end.saturating_sub(range.start) as usize;
    (0..len).into_par_iter().map(|k| sample(cfg, split, range.start + k as u64)).collect()
}

/// A binding test item (SugarCrepe swap-att style): sample `index` of [`Split::Binding`]
/// and its caption with the two objects' colours exchanged ("a red circle and a blue
/// square" against "a blue circle and a red square").
pub fn binding_pair(cfg: &ShapesConfig, index: u64) -> (Sample, String) {
    let draft = Draft::new(cfg, Split::Binding, index);
    let swapped = draft.caption_of(&draft.scene.with_colours_swapped());
    (draft.finish(cfg), swapped)
}

/// A relation test item: sample `index` of [`Split::Relation`] and its caption with the
/// objects exchanged ("A left of B" against "B left of A").
pub fn relation_pair(cfg: &ShapesConfig, index: u64) -> (Sample, String) {
    let draft = Draft::new(cfg, Split::Relation, index);
    let swapped = draft.caption_of(&draft.scene.with_objects_reversed());
    (draft.finish(cfg), swapped)
}

/// A tokenizer corpus: the captions of training samples `0..n` (no pixels are rendered),
/// then lines holding every word evaluation uses: all carriers, held-out synonyms,
/// relations, and every zero-shot prompt.
pub fn caption_corpus(cfg: &ShapesConfig, n: usize) -> Vec<String> {
    let mut corpus: Vec<String> = (0..n)
        .into_par_iter()
        .map(|i| {
            let draft = Draft::new(cfg, Split::Train, i as u64);
            draft.caption_of(&draft.scene)
        })
        .collect();
    corpus.extend(caption::vocabulary_lines());
    for factor in zero_shot_factors() {
        corpus.extend((0..factor.classes.len()).flat_map(|c| factor.prompts(c)));
    }
    corpus
}
