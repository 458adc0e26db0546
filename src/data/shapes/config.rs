//! The difficulty knobs of the shapes world. A config plus a split and an index determine a
//! sample completely, so the config is part of a run's identity (serde-serialisable for
//! `config.json`).

use serde::{Deserialize, Serialize};

use super::split::HELD_IN_SHAPES_PER_COLOUR;
use crate::error::{Error, Result};

/// Knobs of the generator. `Default` is the full design of the reference (64 px, counts,
/// textures, two-object scenes); [`ShapesConfig::tiny`] is the preset a tiny model learns in
/// minutes on a 2-core CPU.
///
/// Defaults and why:
/// - `seed: 0`: the world's identity; another seed is another, equally hard, world.
/// - `image_size: 64`: large enough that stripes, dots and outlines are visible on a medium
///   object (radius about 7 px), small enough for CPU runs. Any size from 16 to 1024 renders
///   the same scene (layouts are drawn in fractions of the image side).
/// - `max_count: 5`: scenes with 1 to 4 copies of an object in training; 5 copies only in
///   [`Split::Extrapolate`](super::Split::Extrapolate) (the count-extrapolation hold-out).
///   1 disables counts: one object, and captions never say "one".
/// - `two_object_prob: 0.25`: the share of training scenes with two different objects joined
///   by "and" or a spatial relation (half each), so captions teach relations and binding.
/// - `textures: true`: solid, striped, dotted, outlined; `false` draws everything solid and
///   captions never name a texture.
/// - `colour_jitter: 1.0`: scales the HSV jitter around each colour centre (hue +-8 degrees,
///   saturation +-15% of its own, value +-0.08 at 1.0), so a colour is a region, not one RGB value.
/// - `position_jitter: 1.0`: how far an object moves inside its grid cell (1.0: as far as it
///   can while staying inside the cell).
/// - `size_jitter: 1.0`: radius jitter within a size band (+-0.05 of a cell half-width at
///   1.0; the bands are 0.5, 0.7 and 0.9 of it, so sizes never overlap).
/// - `max_rotation_deg: 30.0`: rotation is uniform in +-this. Limited by default so a square
///   never turns into a diamond and a plus into an x.
/// - `noise: 0.02`: standard deviation of per-pixel noise, in units of full scale.
/// - `object_scale: 1.0`: multiplies every radius band. Above 1 objects are easier to tell
///   apart at low resolution; a large object may then reach past its grid cell, and its
///   centre stays at the cell centre once it fills the cell.
/// - `caption_dropout: 0.3`: probability of dropping each optional caption slot (count,
///   size, texture, position, and "one"), so the model learns partial descriptions.
/// - `colour_dropout: 0.0`: probability that a training caption leaves out an object's
///   colour ("a circle in the top left"), so shape words also meet images without a colour
///   beside them and the text tower learns what a shape is apart from its colour.
///   Evaluation captions and prompts always say the colour.
/// - `hard_negative_group: 1`: training samples come in groups of this many consecutive
///   indices that show the same colour at the same size and position and differ only in
///   shape, so a batch holds pairs that only shape tells apart (hard negatives for the
///   contrast). 1 turns grouping off; at most 6, the held-in shapes of a colour. Needs single
///   objects (`max_count` 1, `two_object_prob` 0). Evaluation splits are never grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShapesConfig {
    pub seed: u64,
    pub image_size: usize,
    pub max_count: usize,
    pub two_object_prob: f64,
    pub textures: bool,
    pub colour_jitter: f64,
    pub position_jitter: f64,
    pub size_jitter: f64,
    pub max_rotation_deg: f64,
    pub noise: f64,
    pub caption_dropout: f64,
    pub object_scale: f64,
    pub colour_dropout: f64,
    pub hard_negative_group: usize,
}

/// The resolutions the generator accepts: below 16 px a small shape is a few pixels and
/// shapes stop being distinguishable; the upper bound only guards against a typo that would
/// allocate gigabytes per sample.
const IMAGE_SIZES: std::ops::RangeInclusive<usize> = 16..=1024;

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig {
            seed: 0,
            image_size: 64,
            max_count: 5,
            two_object_prob: 0.25,
            textures: true,
            colour_jitter: 1.0,
            position_jitter: 1.0,
            size_jitter: 1.0,
            max_rotation_deg: 30.0,
            noise: 0.02,
            caption_dropout: 0.3,
            object_scale: 1.0,
            colour_dropout: 0.0,
            hard_negative_group: 1,
        }
    }
}

impl ShapesConfig {
    /// The preset for a tiny ViT on 2 CPU cores: 48 px (patch 8 gives 36 tokens; at 32 px a
    /// small star is 5 px across and hard to tell from a hexagon), one object per image, no
    /// textures, no noise, objects 1.8 times the default size. Captions still carry size and
    /// position (with dropout), so those zero-shot factors are measurable too.
    ///
    /// Why the larger objects: at scale 1 a small shape is about 8 px across at 48 px and the
    /// tiny vision tower barely separates circle, heart and hexagon. A supervised shape probe
    /// on the tiny tower reached 41% after 300 steps at scale 1, 54% after 200 at 1.4 and 80%
    /// after 200 at 1.8 (2026-11-25, this CPU).
    ///
    /// Why colour dropout 0.5 and hard-negative groups of 3: with colour always said and
    /// batches of random scenes, colour and position separate almost every pair, so the
    /// contrast barely asks for shape (45.8% shape zero-shot on seen pairs after the default
    /// 650 steps). Half the captions without a colour make shape words carry meaning on their
    /// own; groups of three that differ only in shape put pairs in every batch that nothing
    /// but shape tells apart. Together: 83.5% seen, 46.9% unseen; colour dropout alone 86.7%
    /// seen but 19.7% unseen (docs/training.md, 2026-12-05).
    pub fn tiny() -> Self {
        ShapesConfig {
            image_size: 48,
            object_scale: 1.8,
            max_count: 1,
            two_object_prob: 0.0,
            textures: false,
            noise: 0.0,
            colour_dropout: 0.5,
            hard_negative_group: 3,
            ..ShapesConfig::default()
        }
    }

    /// Checks every knob; a config that passes never makes generation misbehave. Generation
    /// itself does not re-check (it cannot fail), so call this where a config enters.
    pub fn validate(&self) -> Result<()> {
        if !IMAGE_SIZES.contains(&self.image_size) {
            return Err(Error::config(format!(
                "shapes image_size must be in {}..={}, got {}",
                IMAGE_SIZES.start(),
                IMAGE_SIZES.end(),
                self.image_size
            )));
        }
        if !(1..=5).contains(&self.max_count) {
            return Err(Error::config(format!(
                "shapes max_count must be 1 to 5 (1 disables counts), got {}",
                self.max_count
            )));
        }
        let unit = [
            ("two_object_prob", self.two_object_prob),
            ("colour_jitter", self.colour_jitter),
            ("position_jitter", self.position_jitter),
            ("size_jitter", self.size_jitter),
            ("noise", self.noise),
            ("caption_dropout", self.caption_dropout),
            ("colour_dropout (msclip train --colour-dropout)", self.colour_dropout),
        ];
        for (name, value) in unit {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::config(format!("shapes {name} must be in [0, 1], got {value}")));
            }
        }
        if !(0.5..=2.0).contains(&self.object_scale) {
            return Err(Error::config(format!("shapes object_scale must be in [0.5, 2], got {}", self.object_scale)));
        }
        if !(0.0..=180.0).contains(&self.max_rotation_deg) {
            return Err(Error::config(format!(
                "shapes max_rotation_deg must be in [0, 180], got {}",
                self.max_rotation_deg
            )));
        }
        if !(1..=HELD_IN_SHAPES_PER_COLOUR).contains(&self.hard_negative_group) {
            return Err(Error::config(format!(
                "shapes hard_negative_group (msclip train --hard-negatives) must be 1 (off) to {HELD_IN_SHAPES_PER_COLOUR}, got {}",
                self.hard_negative_group
            )));
        }
        if self.hard_negative_group > 1 && (self.max_count > 1 || self.two_object_prob > 0.0) {
            return Err(Error::config(format!(
                "shapes hard_negative_group {} needs single objects: max_count 1 and two_object_prob 0 (got {} and {})",
                self.hard_negative_group, self.max_count, self.two_object_prob
            )));
        }
        Ok(())
    }

    /// The largest count training draws: count 5 is held out for extrapolation.
    pub(crate) fn train_max_count(&self) -> usize {
        self.max_count.clamp(1, 4)
    }
}
