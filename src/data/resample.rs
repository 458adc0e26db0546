//! Bicubic resizing of 8-bit RGB as Pillow computes it (`Image.resize(..., BICUBIC)`, which
//! torchvision's `Resize` calls on PIL images, so CLIP's, open_clip's and CLIP_benchmark's
//! evaluation transforms run it): Keys' cubic with a = -0.5, its support widened by the
//! scale when shrinking (antialiasing), each output's weights normalised to sum to one and
//! rounded to 22-bit fixed point, one pass per axis with the first pass's result rounded and
//! clamped to 8 bits. Written from Pillow 13's algorithm (libImaging/Resample.c) so
//! that the pixels match it exactly, which a generic resizer (float intermediates, other window
//! bounds) does not: up to 10 levels apart at hard edges, measured on the test image.

/// Fixed-point bits of the weights: Pillow's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Keys' cubic parameter, Pillow's (and Catmull-Rom's).
const A: f64 = -0.5;
const SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index it reads and its fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // Pillow truncates toward zero here (a C cast), then clamps.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (first..last).map(|x| bicubic((x as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    (scaled + if w < 0.0 { -0.5 } else { 0.5 }) as i32
                })
                .collect();
            (first, fixed)
        })
        .collect()
}

/// A fixed-point sum back to a byte: rounded (the sum starts at half a unit) and clamped.
fn to_byte(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Resamples each row of a `width`-pixel HWC RGB image to `out_width` pixels.
fn horizontal_pass(pixels: &[u8], width: usize, out_width: usize) -> Vec<u8> {
    let coeffs = coefficients(width, out_width);
    let mut out = Vec::with_capacity(pixels.len() / width * out_width);
    for row in pixels.chunks_exact(width * 3) {
        for (first, weights) in &coeffs {
            let mut sums = [HALF; 3];
            for (pixel, &w) in row[first * 3..].chunks_exact(3).zip(weights) {
                for c in 0..3 {
                    sums[c] += pixel[c] as i64 * w as i64;
                }
            }
            out.extend(sums.map(to_byte));
        }
    }
    out
}

/// Resamples each column of an image of rows `stride` bytes long to `out_height` rows.
fn vertical_pass(pixels: &[u8], stride: usize, out_height: usize) -> Vec<u8> {
    let coeffs = coefficients(pixels.len() / stride, out_height);
    let mut out = Vec::with_capacity(out_height * stride);
    let mut sums = vec![0i64; stride];
    for (first, weights) in &coeffs {
        sums.fill(HALF);
        for (row, &w) in pixels[first * stride..].chunks_exact(stride).zip(weights) {
            sums.iter_mut().zip(row).for_each(|(sum, &v)| *sum += v as i64 * w as i64);
        }
        out.extend(sums.iter().map(|&sum| to_byte(sum)));
    }
    out
}

/// `pixels` (HWC RGB, `width` x `height`) resized to `out_width` x `out_height` as Pillow's
/// bicubic filter does. Pillow skips a pass whose size does not change, and since Pillow 13
/// runs the vertical pass first when the height shrinks by more than twice as many pixels as the
/// width (earlier versions always ran the horizontal pass first; the orders differ by a level
/// here and there, through the 8-bit intermediate).
pub fn resize_bicubic(
    pixels: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
) -> Vec<u8> {
    assert_eq!(pixels.len(), width * height * 3, "HWC RGB of the given size");
    let shrink_y = height as i64 - out_height as i64;
    let vertical_first = shrink_y > 0 && shrink_y > 2 * (width as i64 - out_width as i64);
    let horizontal = |p: &[u8]| if out_width == width { p.to_vec() } else { horizontal_pass(p, width, out_width) };
    let vertical =
        |p: &[u8], w: usize| if out_height == height { p.to_vec() } else { vertical_pass(p, w * 3, out_height) };
    if vertical_first { horizontal(&vertical(pixels, width)) } else { vertical(&horizontal(pixels), out_width) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_a_flat_image_stays_flat() {
        for (from, to) in [(97, 32), (32, 97), (61, 32), (5, 5)] {
            for (_, weights) in coefficients(from, to) {
                let total: i64 = weights.iter().map(|&w| w as i64).sum();
                assert!((total - (1 << PRECISION_BITS)).abs() <= weights.len() as i64, "{from}->{to}: {total}");
            }
        }
        let flat = vec![123u8; 40 * 30 * 3];
        assert!(resize_bicubic(&flat, (40, 30), (17, 9)).iter().all(|&v| v == 123));
    }
}
