//! The rasteriser: a scene to HWC RGB bytes at any resolution. Each pixel centre is moved
//! into the object's frame and its signed distance turned into coverage over a one-pixel
//! ramp, which anti-aliases edges, stripes and dots alike.

use super::config::ShapesConfig;
use super::factors::{Background, Texture};
use super::scene::{Object, Scene};
use super::sdf::Outline;
use crate::tensor::Rng;

/// Renders `scene` at `cfg.image_size`. Draws only background parameters and pixel noise
/// from `rng`, after everything the scene and caption needed.
pub(crate) fn render(scene: &Scene, cfg: &ShapesConfig, rng: &mut Rng) -> Vec<u8> {
    let n = cfg.image_size;
    if n == 0 {
        return Vec::new(); // an unvalidated config: nothing to draw, and no zero-width rows
    }
    let mut canvas = vec![0.0f32; n * n * 3];
    paint_background(scene.background, n, rng, &mut canvas);
    for object in &scene.objects {
        paint_object(object, n, &mut canvas);
    }
    quantise(&canvas, cfg.noise as f32, rng)
}

/// Grey levels of the backgrounds. All grey, and far from white (value >= 0.87) and black
/// (value <= 0.18) objects except the plain light and dark ones, which never carry them.
const LIGHT: (f32, f32) = (0.82, 0.92);
const DARK: (f32, f32) = (0.08, 0.18);
const MID: (f32, f32) = (0.35, 0.65);
const RAMP_LOW: (f32, f32) = (0.3, 0.4);
const RAMP_HIGH: (f32, f32) = (0.6, 0.7);
/// Lattice cells across the image for the smooth noise background.
const NOISE_CELLS: usize = 5;

fn between(rng: &mut Rng, (lo, hi): (f32, f32)) -> f32 {
    lo + (hi - lo) * rng.uniform() as f32
}

/// Fills the canvas with a grey background; `level(x, y)` gets pixel column and row.
fn fill(n: usize, canvas: &mut [f32], level: impl Fn(usize, usize) -> f32) {
    for (y, row) in canvas.chunks_exact_mut(3 * n).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            px.fill(level(x, y));
        }
    }
}

/// Pixel-centre coordinates in fractions of the side, one per pixel column (or row).
fn centres(n: usize) -> impl Iterator<Item = f32> {
    (0..n).map(move |i| (i as f32 + 0.5) / n as f32)
}

fn paint_background(background: Background, n: usize, rng: &mut Rng, canvas: &mut [f32]) {
    match background {
        Background::Light => canvas.fill(between(rng, LIGHT)),
        Background::Dark => canvas.fill(between(rng, DARK)),
        Background::Noise => {
            // Value noise: random greys on a lattice, smoothstep-interpolated, so the
            // blotches have the same size at every resolution. Lattice cell and weight
            // depend on the column or the row only, so they are computed once per line.
            let side = NOISE_CELLS + 1;
            let lattice: Vec<f32> = (0..side * side).map(|_| between(rng, MID)).collect();
            let cells: Vec<(usize, f32)> = centres(n)
                .map(|c| {
                    let g = c * NOISE_CELLS as f32;
                    let i = (g as usize).min(NOISE_CELLS - 1);
                    let t = g - i as f32;
                    (i, t * t * (3.0 - 2.0 * t))
                })
                .collect();
            fill(n, canvas, |x, y| {
                let ((i, tx), (j, ty)) = (cells[x], cells[y]);
                let at = |a: usize, b: usize| lattice[b * side + a];
                let top = at(i, j) + (at(i + 1, j) - at(i, j)) * tx;
                let bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * tx;
                top + (bottom - top) * ty
            });
        }
        Background::Gradient => {
            let angle = std::f32::consts::TAU * rng.uniform() as f32;
            let (low, high) = (between(rng, RAMP_LOW), between(rng, RAMP_HIGH));
            let (dy, dx) = angle.sin_cos();
            // Projection on the direction, scaled so it stays in [0, 1] in every direction,
            // split into a column part and a row part.
            let scale = std::f32::consts::FRAC_1_SQRT_2;
            let across: Vec<f32> = centres(n).map(|c| (c - 0.5) * dx * scale + 0.5).collect();
            let down: Vec<f32> = centres(n).map(|c| (c - 0.5) * dy * scale).collect();
            fill(n, canvas, |x, y| low + (high - low) * (across[x] + down[y]).clamp(0.0, 1.0));
        }
    }
}

/// Coverage of a pixel whose centre is at signed distance `d` pixels from an edge.
fn edge(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// A texture at an object's pixel scale.
struct Pattern {
    texture: Texture,
    /// Width of the rim outlined shapes are drawn with; striped and dotted shapes keep it
    /// too, so their silhouette stays readable between stripes.
    rim: f32,
    /// Stripe or dot period in pixels, never below 3 so the pattern stays resolvable.
    period: f32,
}

impl Pattern {
    fn new(texture: Texture, radius_px: f32) -> Pattern {
        Pattern { texture, rim: (0.2 * radius_px).max(1.0), period: (0.5 * radius_px).max(3.0) }
    }

    /// Coverage at signed distance `d` from the outline, `(u, v)` pixels in the object frame.
    fn coverage(&self, d: f32, u: f32, v: f32) -> f32 {
        let fill = edge(d);
        if fill == 0.0 {
            return 0.0;
        }
        let rim = edge(-(d + self.rim));
        let p = self.period;
        match self.texture {
            Texture::Solid => fill,
            Texture::Outlined => fill.min(rim),
            Texture::Striped => {
                let stripe = ((u / p).rem_euclid(1.0) - 0.5).abs() * p - 0.25 * p;
                fill * rim.max(edge(stripe))
            }
            Texture::Dotted => {
                let (fu, fv) = ((u / p).rem_euclid(1.0) - 0.5, (v / p).rem_euclid(1.0) - 0.5);
                let dot = fu.hypot(fv) * p - 0.32 * p;
                fill * rim.max(edge(dot))
            }
        }
    }
}

fn paint_object(object: &Object, n: usize, canvas: &mut [f32]) {
    let outline = Outline::new(object.shape);
    let scale = n as f32;
    let r = object.radius * scale;
    if r <= 0.0 {
        return;
    }
    let (cx, cy) = (object.centre[0] * scale, object.centre[1] * scale);
    let (sin, cos) = object.rotation.sin_cos();
    let colour = object.rgb.map(|c| f32::from(c) / 255.0);
    let pattern = Pattern::new(object.texture, r);
    // Outlines fit in the unit disc; one more pixel covers the anti-aliasing ramp. Only
    // pixels whose centres fall in that disc are visited.
    let reach = r + 1.0;
    let span = |c: f32, half: f32| ((c - half).floor().max(0.0) as usize, ((c + half).ceil().max(0.0) as usize).min(n));
    let (y0, y1) = span(cy, reach);
    for y in y0..y1 {
        let dy = cy - (y as f32 + 0.5); // y up in the object frame
        let (x0, x1) = span(cx, (reach * reach - dy * dy).max(0.0).sqrt());
        for x in x0..x1 {
            let dx = x as f32 + 0.5 - cx;
            let (u, v) = (cos * dx + sin * dy, cos * dy - sin * dx);
            let d = outline.distance([u / r, v / r]) * r;
            let alpha = pattern.coverage(d, u, v);
            if alpha > 0.0 {
                let px = &mut canvas[(y * n + x) * 3..][..3];
                for (p, c) in px.iter_mut().zip(colour) {
                    *p += (c - *p) * alpha;
                }
            }
        }
    }
}

/// To bytes, adding zero-mean noise of standard deviation `noise` first. The noise is
/// triangular (the sum of two 16-bit uniforms, two values per 64-bit draw), scaled to unit
/// variance: a Gaussian per channel would cost more than the rest of a large image.
fn quantise(canvas: &[f32], noise: f32, rng: &mut Rng) -> Vec<u8> {
    // Round half up by adding 0.5 before the (truncating) cast: `f32::round` is a libm call
    // that would cost a fifth of the whole render.
    let to_byte = |v: f32| (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
    if noise <= 0.0 {
        return canvas.iter().map(|&v| to_byte(v)).collect();
    }
    let root6 = 6.0f32.sqrt();
    let unit = noise * root6 / 65536.0;
    let mut out = Vec::with_capacity(canvas.len());
    for pair in canvas.chunks(2) {
        let bits = rng.next_u64();
        for (k, &v) in pair.iter().enumerate() {
            let word = bits >> (32 * k);
            let sum = (word & 0xFFFF) as f32 + ((word >> 16) & 0xFFFF) as f32;
            out.push(to_byte(v + sum * unit - noise * root6));
        }
    }
    out
}
