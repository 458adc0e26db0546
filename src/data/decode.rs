//! An encoded image (JPEG, PNG, WebP, GIF, BMP) to the square RGB pixels a model takes, as
//! CLIP's reference evaluation prepares them (open_clip's `image_transform` for evaluation,
//! torchvision on PIL): convert to RGB, resize so the shorter side is `resolution` with Pillow's
//! bicubic filter ([`super::resample`]), then take the centred `resolution` x `resolution` crop.
//!
//! Bounded before anything large is allocated: the header's size is read first and an image of
//! more than [`MAX_PIXELS`] is refused without decoding it (PIL's decompression-bomb limit).

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};
use rayon::prelude::*;

use super::resample::resize_bicubic;
use super::sources::{EncodedImage, Skipped};

/// The most pixels an image may have: PIL's `Image.MAX_IMAGE_PIXELS`, past which it refuses
/// to open a file as a possible decompression bomb.
pub const MAX_PIXELS: u64 = 89_478_485;

/// Why an image could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Its header says it has more than [`MAX_PIXELS`] pixels.
    TooLarge { width: u32, height: u32 },
    /// Not an image of a known format, or corrupt.
    Unreadable(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { width, height } => {
                write!(f, "{width} x {height} pixels, over the limit of {MAX_PIXELS}")
            }
            DecodeError::Unreadable(why) => write!(f, "not a readable image: {why}"),
        }
    }
}

/// The decoded image converted to 8-bit RGB, whatever its mode: grey, palette, 16-bit and
/// CMYK JPEGs become RGB, an alpha channel is dropped (PIL's `convert("RGB")`, which open_clip
/// applies, drops it the same way rather than compositing on a background).
pub fn decode_rgb(bytes: &[u8]) -> Result<image::RgbImage, DecodeError> {
    let unreadable = |e: image::ImageError| DecodeError::Unreadable(e.to_string());
    let reader = || {
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| DecodeError::Unreadable(e.to_string()))
    };
    let (width, height) = reader()?.into_dimensions().map_err(unreadable)?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    let mut reader = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // The RGBA16 worst case of the checked size, plus the decoder's own buffers.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    let image: DynamicImage = reader.decode().map_err(unreadable)?;
    Ok(image.into_rgb8())
}

/// Python's `round` (half to even), which torchvision's centre crop uses for its offsets.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r as i64 % 2 != 0 { (r - x.signum()) as i64 } else { r as i64 }
}

/// The size torchvision's `Resize(resolution)` gives a `width` x `height` image: the shorter
/// side becomes `resolution`, the longer one scales with it, truncated.
fn resized_size(width: u32, height: u32, resolution: u32) -> (u32, u32) {
    let scaled = |long: u32, short: u32| ((resolution as u64 * long as u64) / short as u64) as u32;
    if width <= height { (resolution, scaled(height, width)) } else { (scaled(width, height), resolution) }
}

/// Shorter side to `resolution` (bicubic), then the centred square crop: HWC RGB bytes,
/// `resolution * resolution * 3` of them.
pub fn resize_and_crop(image: &image::RgbImage, resolution: u32) -> Vec<u8> {
    let (w, h) = resized_size(image.width(), image.height(), resolution);
    let size = (image.width() as usize, image.height() as usize);
    let resized = resize_bicubic(image.as_raw(), size, (w as usize, h as usize));
    let top = round_half_even((h - resolution) as f64 / 2.0) as usize;
    let left = round_half_even((w - resolution) as f64 / 2.0) as usize;
    let (r, stride) = (resolution as usize, w as usize * 3);
    (top..top + r).flat_map(|y| &resized[y * stride + left * 3..y * stride + (left + r) * 3]).copied().collect()
}

/// [`decode_rgb`] then [`resize_and_crop`].
pub fn prepare_image(bytes: &[u8], resolution: u32) -> Result<Vec<u8>, DecodeError> {
    Ok(resize_and_crop(&decode_rgb(bytes)?, resolution))
}

/// Image files read and prepared in parallel ([`prepare_image`]): (position in `paths`, pixels)
/// of each that could be, in order, and the others counted as unreadable with the reason.
pub fn prepare_files(paths: &[&Path], resolution: u32) -> (Vec<(usize, Vec<u8>)>, Skipped) {
    let outcomes: Vec<Result<Vec<u8>, String>> = paths
        .par_iter()
        .map(|path| {
            let bytes = EncodedImage::File(path.to_path_buf()).bytes().map_err(String::from)?;
            prepare_image(&bytes, resolution).map_err(|e| e.to_string())
        })
        .collect();
    let mut skipped = Skipped::default();
    let mut prepared = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(pixels) => prepared.push((i, pixels)),
            Err(why) => skipped.add("unreadable image", format!("{}: {why}", paths[i].display())),
        }
    }
    (prepared, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_crop_offsets_follow_torchvision() {
        assert_eq!(resized_size(640, 480, 224), (298, 224));
        assert_eq!(resized_size(480, 640, 224), (224, 298));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
        assert_eq!(resized_size(10, 1000, 224), (224, 22400));
        assert_eq!([0.5, 1.5, 2.5, 37.0, 37.5].map(round_half_even), [0, 2, 2, 37, 38]);
    }
}
