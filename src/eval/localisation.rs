//! Zero-shot localisation (OneR's claim, after its authors' `localize_patch.py`, oner-notes.md
//! section 5): each patch token of the last block goes through the image head and is compared
//! with the text embedding of an object's name; the heatmap's peak should fall on that object.
//!
//! On the shapes world every object's place is known, so this is measured as the pointing game:
//! on the two-object scenes of the binding split, each object is named by its colour and shape
//! (the zero-shot colour-shape classifier, prompt ensemble and all) and the query is a hit when
//! the centre of the best-scoring patch lies inside that object's box (centre +- radius). The
//! chance level is the share of patches whose centres lie in the box: what a random patch scores.

use std::path::Path;

use super::encode::encode_patches;
use crate::data::shapes::{self, Object, ShapeKind, ShapesConfig, SheetTile};
use crate::error::Result;
use crate::model::{Buffers, ClipModel};
use crate::nn::ParamStore;

/// The pointing game's result over every query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointingGame {
    /// Fraction of queries whose heatmap peaks inside the named object's box.
    pub accuracy: f64,
    /// What a patch drawn at random would score (the mean share of patches inside the box).
    pub chance: f64,
    pub queries: usize,
}

/// One query: an object of one image and the scores of the image's patches against its name.
pub struct Heatmap {
    /// Index of the image among the scenes given to [`heatmaps`].
    pub image: usize,
    /// Its object that was named.
    pub object: Object,
    /// Row-major [grid, grid] cosines of the patches with the object's name.
    pub scores: Vec<f64>,
    pub grid: usize,
}

impl Heatmap {
    /// The row-major index of the best-scoring patch (the first, on ties).
    pub fn peak(&self) -> usize {
        self.scores.iter().enumerate().fold(0, |best, (i, &s)| if s > self.scores[best] { i } else { best })
    }

    /// Whether patch `index`'s centre lies in the named object's box.
    pub fn inside(&self, index: usize) -> bool {
        let centre = |cell: usize| (cell as f32 + 0.5) / self.grid as f32;
        let (x, y) = (centre(index % self.grid), centre(index / self.grid));
        let ([cx, cy], r) = (self.object.centre, self.object.radius);
        (x - cx).abs() <= r && (y - cy).abs() <= r
    }

    pub fn hit(&self) -> bool {
        self.inside(self.peak())
    }

    /// The share of patches inside the box.
    pub fn chance(&self) -> f64 {
        (0..self.scores.len()).filter(|&i| self.inside(i)).count() as f64 / self.scores.len().max(1) as f64
    }
}

/// The first `count` two-object scenes of the binding split, the scenes the pointing game uses.
pub fn scenes(data: &ShapesConfig, count: usize) -> Vec<shapes::Sample> {
    (0..count as u64).map(|i| shapes::binding_pair(data, i).0).collect()
}

/// The heatmaps of every object of `scenes` (images of `image_size` pixels), named by their
/// rows of `colour_shape` (the zero-shot classifier of the joint colour-shape factor,
/// [64, embed_dim]). [`Heatmap::image`] indexes `scenes`.
pub fn heatmaps(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    scenes: &[&shapes::Sample],
    image_size: usize,
    colour_shape: &[f64],
) -> Result<Vec<Heatmap>> {
    let dim = model.config.embed_dim;
    let grid = model.config.vision.grid();
    let pixels: Vec<&[u8]> = scenes.iter().map(|s| s.image.as_slice()).collect();
    let patches = encode_patches(model, params, buffers, &pixels, image_size)?;
    let per_image = grid * grid * dim;
    let mut out = Vec::new();
    for (i, sample) in scenes.iter().enumerate() {
        for object in &sample.scene.objects {
            let class = object.colour.index() * ShapeKind::ALL.len() + object.shape.index();
            let name = &colour_shape[class * dim..(class + 1) * dim];
            let scores = patches[i * per_image..(i + 1) * per_image]
                .chunks_exact(dim)
                .map(|patch| patch.iter().zip(name).map(|(a, b)| a * b).sum())
                .collect();
            out.push(Heatmap { image: i, object: object.clone(), scores, grid });
        }
    }
    Ok(out)
}

/// The pointing game over `maps`.
pub fn pointing_game(maps: &[Heatmap]) -> PointingGame {
    let queries = maps.len();
    let mean = |f: &dyn Fn(&Heatmap) -> f64| maps.iter().map(f).sum::<f64>() / queries.max(1) as f64;
    PointingGame { accuracy: mean(&|m| f64::from(u8::from(m.hit()))), chance: mean(&Heatmap::chance), queries }
}

/// Writes `maps` as one PNG sheet: each image with its heatmap laid over it (blue low, red
/// high, scaled per map), the named object's box in white and the peak patch in black, above
/// the object's name and whether the peak hit it.
pub fn write_heatmaps(path: &Path, scenes: &[&shapes::Sample], size: usize, maps: &[Heatmap]) -> Result<()> {
    let tiles: Vec<SheetTile> = maps
        .iter()
        .map(|map| {
            let image = &scenes[map.image].image;
            let caption = format!(
                "{} {}: {}",
                map.object.colour.word(),
                map.object.shape.word(),
                if map.hit() { "hit" } else { "miss" }
            );
            SheetTile { image: overlay(image, size, map), caption }
        })
        .collect();
    shapes::write_sheet(path, size, &tiles)
}

/// `image` (HWC RGB, `size` a side) half covered by the map's colours, with the box and the
/// peak patch outlined.
fn overlay(image: &[u8], size: usize, map: &Heatmap) -> Vec<u8> {
    let (low, high) = map.scores.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &s| (a.min(s), b.max(s)));
    let span = (high - low).max(1e-12);
    let cell = |px: usize| (px * map.grid / size).min(map.grid - 1);
    let peak = map.peak();
    let ([cx, cy], r) = (map.object.centre, map.object.radius);
    let centre = |px: isize| (px as f32 + 0.5) / size as f32;
    let on_image = |x: isize, y: isize| (0..size as isize).contains(&x) && (0..size as isize).contains(&y);
    let in_box = |x: isize, y: isize| on_image(x, y) && (centre(x) - cx).abs() <= r && (centre(y) - cy).abs() <= r;
    let in_peak = |x: isize, y: isize| on_image(x, y) && cell(y as usize) * map.grid + cell(x as usize) == peak;
    // A pixel of a region whose 4-neighbour is not: the region's outline.
    let outline = |inside: &dyn Fn(isize, isize) -> bool, x: isize, y: isize| {
        inside(x, y) && [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)].iter().any(|&(a, b)| !inside(a, b))
    };
    let mut out = image.to_vec();
    for y in 0..size {
        for x in 0..size {
            let v = (map.scores[cell(y) * map.grid + cell(x)] - low) / span;
            let heat = [255.0 * v, 0.0, 255.0 * (1.0 - v)];
            let at = (y * size + x) * 3;
            for c in 0..3 {
                out[at + c] = (0.5 * f64::from(image[at + c]) + 0.5 * heat[c]) as u8;
            }
            let (x, y) = (x as isize, y as isize);
            if outline(&in_box, x, y) {
                out[at..at + 3].copy_from_slice(&[255, 255, 255]);
            } else if outline(&in_peak, x, y) {
                out[at..at + 3].copy_from_slice(&[0, 0, 0]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::{Colour, Position, Size, Texture};

    fn object_at(centre: [f32; 2], radius: f32) -> Object {
        Object {
            shape: ShapeKind::ALL[0],
            colour: Colour::ALL[0],
            size: Size::ALL[0],
            texture: Texture::ALL[0],
            position: Position::ALL[0],
            centre,
            radius,
            rotation: 0.0,
            rgb: [0, 0, 0],
        }
    }

    #[test]
    fn the_peak_patch_hits_when_its_centre_is_in_the_box() {
        // A 4 x 4 grid: patch centres at 1/8, 3/8, 5/8, 7/8. The box [0.5, 1] x [0, 0.5] holds
        // the centres of patches (row 0-1, column 2-3): 4 of 16.
        let object = object_at([0.75, 0.25], 0.25);
        let mut scores = vec![0.0; 16];
        scores[7] = 1.0; // row 1, column 3
        let map = Heatmap { image: 0, object: object.clone(), scores: scores.clone(), grid: 4 };
        assert_eq!(map.peak(), 7);
        assert!(map.hit());
        assert_eq!(map.chance(), 0.25);
        scores[8] = 2.0; // row 2, column 0: outside
        let miss = Heatmap { image: 0, object, scores, grid: 4 };
        assert!(!miss.hit());
        let game = pointing_game(&[map, miss]);
        assert_eq!((game.accuracy, game.chance, game.queries), (0.5, 0.25, 2));
    }
}
