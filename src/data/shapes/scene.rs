//! Scenes: what one image shows (factor labels and geometry of every object, the
//! background, the relation), drawn from a split's distribution. Geometry is kept in
//! fractions of the image side, so one scene renders at any resolution.

use serde::{Deserialize, Serialize};

use super::config::ShapesConfig;
use super::factors::{Background, Colour, Position, Relation, ShapeKind, Size, Texture};
use super::palette;
use super::split::{
    HELD_IN_SHAPES_PER_COLOUR, HELD_OUT_COUNT, HELD_OUT_TEXTURES, Split, group_rng, is_held_out, is_held_out_placement,
    is_held_out_texture,
};
use crate::tensor::Rng;

/// One drawn object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: ShapeKind,
    pub colour: Colour,
    pub size: Size,
    pub texture: Texture,
    /// The grid cell holding the centre.
    pub position: Position,
    /// Centre, in fractions of the image side: x to the right, y down.
    pub centre: [f32; 2],
    /// Radius of the disc the outline fits in, as a fraction of the image side.
    pub radius: f32,
    /// Rotation in radians, counter-clockwise; a nuisance, never described.
    pub rotation: f32,
    /// The jittered colour actually drawn.
    pub rgb: [u8; 3],
}

/// How the objects of a scene relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `count` copies of one object (same shape, colour, size, texture; own place and
    /// rotation). Count 1 is a single object.
    Copies { count: usize },
    /// Two different objects, `objects[0]` first in the caption: "A and B" when `relation`
    /// is `None`, else "A `<relation>` B".
    Pair { relation: Option<Relation> },
}

/// Everything a sample's image and caption are made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub layout: Layout,
    pub background: Background,
}

impl Scene {
    /// The scene with the colours of its first two objects exchanged: what the
    /// attribute-swapped caption of a binding test describes.
    pub(crate) fn with_colours_swapped(&self) -> Scene {
        let mut swapped = self.clone();
        if let [a, b, ..] = swapped.objects.as_mut_slice() {
            std::mem::swap(&mut a.colour, &mut b.colour);
            std::mem::swap(&mut a.rgb, &mut b.rgb);
        }
        swapped
    }

    /// The scene with its objects in reverse order: "B rel A" for a relation test.
    pub(crate) fn with_objects_reversed(&self) -> Scene {
        let mut reversed = self.clone();
        reversed.objects.reverse();
        reversed
    }
}

/// Half a grid cell, in fractions of the image side.
const HALF_CELL: f32 = 1.0 / 6.0;
/// Radius band centres of small, medium, large, in half cells: a large object nearly fills
/// its cell, a small one is about a quarter of its area.
const SIZE_BANDS: [f32; 3] = [0.5, 0.7, 0.9];
/// Radius jitter at `size_jitter` 1.0, in half cells: less than half the band spacing, so
/// sizes never overlap.
const SIZE_JITTER: f32 = 0.05;
/// Smallest gap between copies, in fractions of the image side.
const COPY_GAP: f32 = 0.02;
/// Rejection placement budget: attempts per layout, and layouts tried before falling back
/// to distinct grid cells (which cannot overlap, since every object fits in its cell).
const PLACEMENT_TRIES: usize = 200;
const PLACEMENT_RESTARTS: usize = 4;

/// Draws the scene of one sample of `split`.
pub(crate) fn draw(cfg: &ShapesConfig, split: Split, rng: &mut Rng) -> Scene {
    let (objects, layout) = match split {
        Split::Train => {
            if rng.uniform() < cfg.two_object_prob {
                let kinds = two_kinds(rng, |a, b| a != b);
                let relation = if rng.uniform() < 0.5 { None } else { Some(pick(rng, Relation::ALL, |_| true)) };
                (pair(cfg, rng, kinds, relation), Layout::Pair { relation })
            } else {
                let kind = held_in_kind(rng);
                copies_of(cfg, rng, kind)
            }
        }
        Split::Seen | Split::UnseenTemplate => {
            let kind = held_in_kind(rng);
            copies_of(cfg, rng, kind)
        }
        Split::Unseen => {
            let colour = pick(rng, Colour::ALL, |_| true);
            let shape = pick(rng, ShapeKind::ALL, |s| is_held_out(colour.index(), s.index()));
            copies_of(cfg, rng, (colour, shape))
        }
        Split::Binding => {
            let kinds = two_kinds(rng, |(c1, s1), (c2, s2)| {
                c1 != c2 && s1 != s2 && !is_held_out(c1.index(), s2.index()) && !is_held_out(c2.index(), s1.index())
            });
            (pair(cfg, rng, kinds, None), Layout::Pair { relation: None })
        }
        Split::Relation => {
            let kinds = two_kinds(rng, |(c1, s1), (c2, s2)| c1 != c2 && s1 != s2);
            let relation = Some(pick(rng, Relation::ALL, |_| true));
            (pair(cfg, rng, kinds, relation), Layout::Pair { relation })
        }
        Split::Extrapolate => extrapolate(cfg, rng),
    };
    finish_scene(rng, objects, layout)
}

/// Training sample `index` under `cfg.hard_negative_group` = k > 1: one object whose colour,
/// size and position are those of its group (indices `k * g .. k * g + k`), and whose shape
/// is the `index % k`-th of the group's shuffle of the colour's held-in shapes, so no two
/// members share a shape. Rotation, jitter, background and caption stay per sample.
pub(crate) fn draw_grouped(cfg: &ShapesConfig, rng: &mut Rng, index: u64) -> Scene {
    // Clamped so that an unvalidated config still never panics.
    let k = cfg.hard_negative_group.clamp(1, HELD_IN_SHAPES_PER_COLOUR) as u64;
    let member = (index % k) as usize;
    let mut group = group_rng(cfg.seed, index / k);
    let colour = pick(&mut group, Colour::ALL, |_| true);
    let position = pick(&mut group, Position::ALL, |_| true);
    let size = pick(&mut group, Size::ALL, |s| !is_held_out_placement(s, position));
    // A partial Fisher-Yates shuffle drawn last: every member makes the same first swaps, so
    // the members agree on the permutation's prefix.
    let mut shapes: Vec<ShapeKind> =
        ShapeKind::ALL.iter().copied().filter(|s| !is_held_out(colour.index(), s.index())).collect();
    for i in 0..=member {
        let j = i + group.below(shapes.len() - i);
        shapes.swap(i, j);
    }
    let look = look(cfg, rng, (colour, shapes[member]), None);
    let objects = vec![in_cell(cfg, rng, look, position, Some(size))];
    finish_scene(rng, objects, Layout::Copies { count: 1 })
}

/// The scene of `objects` on a background drawn so that no object vanishes into it.
fn finish_scene(rng: &mut Rng, objects: Vec<Object>, layout: Layout) -> Scene {
    let background = pick(rng, Background::ALL, |b| {
        objects
            .iter()
            .all(|o| !matches!((b, o.colour), (Background::Light, Colour::White) | (Background::Dark, Colour::Black)))
    });
    Scene { objects, layout, background }
}

/// A uniform choice among the values that pass `keep`. Every caller keeps at least one
/// value; were none kept, the first value is returned rather than panicking.
fn pick<T: Copy>(rng: &mut Rng, values: &[T], keep: impl Fn(T) -> bool) -> T {
    let kept = values.iter().filter(|&&v| keep(v)).count();
    let k = rng.below(kept);
    values.iter().copied().filter(|&v| keep(v)).nth(k).unwrap_or(values[0])
}

/// A uniform held-in colour-shape pair: a uniform colour, then a uniform shape among its six
/// held-in ones. The hold-out pattern is balanced, so this is uniform over the 48 pairs.
fn held_in_kind(rng: &mut Rng) -> (Colour, ShapeKind) {
    let colour = pick(rng, Colour::ALL, |_| true);
    let shape = pick(rng, ShapeKind::ALL, |s| !is_held_out(colour.index(), s.index()));
    (colour, shape)
}

/// Two held-in kinds that satisfy `accept`, by rejection. Every caller accepts a large share
/// of pairs (at least 40%), so this ends after a couple of draws on average.
fn two_kinds(
    rng: &mut Rng,
    accept: impl Fn((Colour, ShapeKind), (Colour, ShapeKind)) -> bool,
) -> [(Colour, ShapeKind); 2] {
    loop {
        let (a, b) = (held_in_kind(rng), held_in_kind(rng));
        if accept(a, b) {
            return [a, b];
        }
    }
}

/// What copies of one object share.
#[derive(Clone, Copy)]
struct Look {
    colour: Colour,
    shape: ShapeKind,
    texture: Texture,
    rgb: [u8; 3],
}

/// A look for a colour-shape pair; the texture is drawn among those not held out for the
/// shape unless given.
fn look(cfg: &ShapesConfig, rng: &mut Rng, (colour, shape): (Colour, ShapeKind), texture: Option<Texture>) -> Look {
    let texture = match texture {
        Some(t) => t,
        None if cfg.textures => pick(rng, Texture::ALL, |t| !is_held_out_texture(t, shape)),
        None => Texture::Solid,
    };
    Look { colour, shape, texture, rgb: palette::jittered_rgb(colour, cfg.colour_jitter, rng) }
}

/// A radius inside the size's band.
fn radius(cfg: &ShapesConfig, rng: &mut Rng, size: Size) -> f32 {
    let jitter = (2.0 * rng.uniform() as f32 - 1.0) * SIZE_JITTER * cfg.size_jitter as f32;
    (SIZE_BANDS[size.index()] + jitter) * HALF_CELL * cfg.object_scale as f32
}

/// A centre inside a grid cell such that the object's disc stays inside the cell.
fn centre_in_cell(cfg: &ShapesConfig, rng: &mut Rng, position: Position, radius: f32) -> [f32; 2] {
    let slack = (HALF_CELL - radius).max(0.0) * cfg.position_jitter as f32;
    let mut coordinate = |cell: usize| (cell as f32 + 0.5) / 3.0 + (2.0 * rng.uniform() as f32 - 1.0) * slack;
    let x = coordinate(position.col());
    [x, coordinate(position.row())]
}

fn object(cfg: &ShapesConfig, rng: &mut Rng, look: Look, size: Size, radius: f32, centre: [f32; 2]) -> Object {
    let rotation = ((2.0 * rng.uniform() - 1.0) * cfg.max_rotation_deg.to_radians()) as f32;
    Object {
        shape: look.shape,
        colour: look.colour,
        size,
        texture: look.texture,
        position: Position::of_point(centre[0], centre[1]),
        centre,
        radius,
        rotation,
        rgb: look.rgb,
    }
}

/// One object in a grid cell; the size is drawn unless given, avoiding the held-out corner.
fn in_cell(cfg: &ShapesConfig, rng: &mut Rng, look: Look, position: Position, size: Option<Size>) -> Object {
    let size = size.unwrap_or_else(|| pick(rng, Size::ALL, |s| !is_held_out_placement(s, position)));
    let r = radius(cfg, rng, size);
    let centre = centre_in_cell(cfg, rng, position, r);
    object(cfg, rng, look, size, r, centre)
}

/// A single-kind scene of the training count range (1 when counts are off).
fn copies_of(cfg: &ShapesConfig, rng: &mut Rng, kind: (Colour, ShapeKind)) -> (Vec<Object>, Layout) {
    let count = 1 + rng.below(cfg.train_max_count());
    let look = look(cfg, rng, kind, None);
    (copies(cfg, rng, look, count), Layout::Copies { count })
}

/// `count` copies of a look. One copy goes in a uniform cell; several are scattered by
/// rejection (uniform centres, no two closer than their radii plus a gap, none in the
/// held-out corner when large).
fn copies(cfg: &ShapesConfig, rng: &mut Rng, look: Look, count: usize) -> Vec<Object> {
    if count <= 1 {
        let position = pick(rng, Position::ALL, |_| true);
        return vec![in_cell(cfg, rng, look, position, None)];
    }
    let size = pick(rng, Size::ALL, |_| true);
    let r = radius(cfg, rng, size);
    scatter(cfg, rng, count, r, size).into_iter().map(|centre| object(cfg, rng, look, size, r, centre)).collect()
}

fn scatter(cfg: &ShapesConfig, rng: &mut Rng, count: usize, r: f32, size: Size) -> Vec<[f32; 2]> {
    let allowed = |c: [f32; 2]| !is_held_out_placement(size, Position::of_point(c[0], c[1]));
    for _ in 0..PLACEMENT_RESTARTS {
        let mut placed: Vec<[f32; 2]> = Vec::with_capacity(count);
        for _ in 0..PLACEMENT_TRIES {
            let c = [r + (1.0 - 2.0 * r) * rng.uniform() as f32, r + (1.0 - 2.0 * r) * rng.uniform() as f32];
            let apart = placed.iter().all(|p| (p[0] - c[0]).hypot(p[1] - c[1]) >= 2.0 * r + COPY_GAP);
            if apart && allowed(c) {
                placed.push(c);
                if placed.len() == count {
                    return placed;
                }
            }
        }
    }
    let mut cells: Vec<Position> = Position::ALL.iter().copied().filter(|&p| !is_held_out_placement(size, p)).collect();
    (0..count.min(cells.len()))
        .map(|_| {
            let cell = cells.swap_remove(rng.below(cells.len()));
            centre_in_cell(cfg, rng, cell, r)
        })
        .collect()
}

/// Two objects in cells that make `relation` true (same row for left/right, same column for
/// above/below), or in any two distinct cells for "and".
fn pair(cfg: &ShapesConfig, rng: &mut Rng, kinds: [(Colour, ShapeKind); 2], relation: Option<Relation>) -> Vec<Object> {
    let cells = match relation {
        None => {
            let a = pick(rng, Position::ALL, |_| true);
            [a, pick(rng, Position::ALL, |p| p != a)]
        }
        Some(relation) => {
            let line = rng.below(3);
            let first = rng.below(3);
            let (lo, hi) = {
                let second = (first + 1 + rng.below(2)) % 3;
                (first.min(second), first.max(second))
            };
            match relation {
                Relation::LeftOf => [Position::at(line, lo), Position::at(line, hi)],
                Relation::RightOf => [Position::at(line, hi), Position::at(line, lo)],
                Relation::Above => [Position::at(lo, line), Position::at(hi, line)],
                Relation::Below => [Position::at(hi, line), Position::at(lo, line)],
            }
        }
    };
    kinds
        .into_iter()
        .zip(cells)
        .map(|(kind, cell)| {
            let look = look(cfg, rng, kind, None);
            in_cell(cfg, rng, look, cell, None)
        })
        .collect()
}

/// The kinds of extrapolation sample, one hold-out each.
#[derive(Clone, Copy, PartialEq)]
enum Stretch {
    TextureShape,
    Corner,
    FiveCopies,
}

fn extrapolate(cfg: &ShapesConfig, rng: &mut Rng) -> (Vec<Object>, Layout) {
    let available = |s: Stretch| match s {
        Stretch::TextureShape => cfg.textures,
        Stretch::Corner => true,
        Stretch::FiveCopies => cfg.max_count >= HELD_OUT_COUNT,
    };
    let single = |objects| (objects, Layout::Copies { count: 1 });
    match pick(rng, &[Stretch::TextureShape, Stretch::Corner, Stretch::FiveCopies], available) {
        Stretch::TextureShape => {
            let (texture, shape) = pick(rng, &HELD_OUT_TEXTURES, |_| true);
            let colour = pick(rng, Colour::ALL, |c| !is_held_out(c.index(), shape.index()));
            let look = look(cfg, rng, (colour, shape), Some(texture));
            single(copies(cfg, rng, look, 1))
        }
        Stretch::Corner => {
            let kind = held_in_kind(rng);
            let look = look(cfg, rng, kind, None);
            single(vec![in_cell(cfg, rng, look, Position::BottomRight, Some(Size::Large))])
        }
        Stretch::FiveCopies => {
            let kind = held_in_kind(rng);
            let look = look(cfg, rng, kind, None);
            (copies(cfg, rng, look, HELD_OUT_COUNT), Layout::Copies { count: HELD_OUT_COUNT })
        }
    }
}
