//! RGB images written as PNG files, atomically (the data preview and the run's plots).

use std::path::Path;

use super::atomic::write_atomically_with;
use crate::error::{Error, Result};

/// Writes `rgb` (row-major, 3 bytes per pixel) as an 8-bit RGB PNG.
pub fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let encoding = |e: png::EncodingError| match e {
        png::EncodingError::IoError(e) => Error::io(path, e),
        other => Error::format("png", other.to_string()),
    };
    write_atomically_with(path, |out| {
        let mut encoder = png::Encoder::new(out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(encoding)?;
        writer.write_image_data(rgb).map_err(encoding)?;
        writer.finish().map_err(encoding)
    })
}
