//! Colour names as regions of HSV space: a centre per name and a jitter box around it, so
//! the model has to learn "red" as a region rather than one RGB triple. The boxes of
//! neighbouring hues (red 0, orange 28, yellow 55 degrees) stay apart at full jitter.

use super::factors::Colour;
use crate::tensor::Rng;

/// Hue in degrees, saturation and value of each colour's centre.
fn centre(colour: Colour) -> (f64, f64, f64) {
    match colour {
        Colour::Red => (0.0, 0.85, 0.85),
        Colour::Orange => (28.0, 0.9, 0.95),
        Colour::Yellow => (55.0, 0.85, 0.93),
        Colour::Green => (125.0, 0.7, 0.68),
        Colour::Blue => (220.0, 0.8, 0.88),
        Colour::Purple => (280.0, 0.6, 0.72),
        Colour::White => (0.0, 0.03, 0.95),
        Colour::Black => (0.0, 0.0, 0.1),
    }
}

/// Half-widths of the jitter box at `colour_jitter` 1.0: hue in degrees, saturation as a
/// fraction of the centre's (so white stays white rather than turning pastel), value.
const JITTER: (f64, f64, f64) = (8.0, 0.15, 0.08);

/// A random RGB colour inside the colour's region; `jitter` in [0, 1] scales the box.
pub(crate) fn jittered_rgb(colour: Colour, jitter: f64, rng: &mut Rng) -> [u8; 3] {
    let (h, s, v) = centre(colour);
    let mut offset = |half: f64| (2.0 * rng.uniform() - 1.0) * half * jitter;
    let h = (h + offset(JITTER.0)).rem_euclid(360.0);
    let s = (s * (1.0 + offset(JITTER.1))).clamp(0.0, 1.0);
    let v = (v + offset(JITTER.2)).clamp(0.0, 1.0);
    hsv_to_rgb(h, s, v).map(|c| (c * 255.0).round() as u8)
}

/// Standard HSV to RGB, hue in degrees, everything else in [0, 1].
fn hsv_to_rgb(h: f64, s: f64, v: f64) -> [f64; 3] {
    let c = v * s;
    let sector = h / 60.0;
    let x = c * (1.0 - (sector % 2.0 - 1.0).abs());
    let (r, g, b) = match sector as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}
