//! A contact sheet for looking at the data: a grid of samples with their captions written
//! underneath, as one PNG. Seeing the images with their captions is the quickest check that
//! a change to the generator did what it meant to.

use std::path::Path;

use super::config::ShapesConfig;
use super::font::{GLYPH_HEIGHT, GLYPH_WIDTH, draw_text};
use super::split::Split;
use super::{Sample, samples};
use crate::error::{Error, Result};
use crate::files::write_rgb_png;

/// Images are enlarged (nearest neighbour, whole multiples) to at least this many pixels.
const MIN_TILE: usize = 96;
/// Cells are at least this wide, so a caption line holds 28 characters.
const MIN_CELL_WIDTH: usize = 168;
/// Caption lines under each image; longer captions end in "..".
const CAPTION_LINES: usize = 4;
const LINE_HEIGHT: usize = GLYPH_HEIGHT + 2;
/// Space between cells and around the sheet.
const GAP: usize = 8;
/// Most samples one sheet shows.
const MAX_COUNT: usize = 1024;

/// Where everything goes on a preview sheet: a near-square grid of cells, each an enlarged
/// image above its caption. A pure function of image size and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewLayout {
    pub columns: usize,
    pub rows: usize,
    /// Side of an image as shown.
    pub tile: usize,
    pub cell_width: usize,
    pub cell_height: usize,
    /// The sheet, in pixels.
    pub width: usize,
    pub height: usize,
}

impl PreviewLayout {
    pub fn new(image_size: usize, count: usize) -> PreviewLayout {
        let columns = (count as f64).sqrt().ceil().max(1.0) as usize;
        let rows = count.div_ceil(columns).max(1);
        let tile = image_size * MIN_TILE.div_ceil(image_size.max(1)).max(1);
        let cell_width = tile.max(MIN_CELL_WIDTH);
        let cell_height = tile + GAP / 2 + CAPTION_LINES * LINE_HEIGHT;
        PreviewLayout {
            columns,
            rows,
            tile,
            cell_width,
            cell_height,
            width: columns * cell_width + (columns + 1) * GAP,
            height: rows * cell_height + (rows + 1) * GAP,
        }
    }

    /// Characters that fit on one caption line.
    fn line_chars(&self) -> usize {
        (self.cell_width + 1) / (GLYPH_WIDTH + 1)
    }

    /// The sheet as RGB bytes: white paper, images, black captions.
    fn compose(&self, tiles: &[SheetTile], image_size: usize) -> Vec<u8> {
        let mut sheet = vec![255u8; self.width * self.height * 3];
        let scale = self.tile / image_size.max(1);
        for (i, tile) in tiles.iter().enumerate() {
            let left = GAP + (i % self.columns) * (self.cell_width + GAP);
            let top = GAP + (i / self.columns) * (self.cell_height + GAP);
            let offset = left + (self.cell_width - self.tile) / 2;
            for (y, row) in tile.image.chunks_exact(image_size * 3).enumerate() {
                for (x, px) in row.chunks_exact(3).enumerate() {
                    for dy in 0..scale {
                        let start = ((top + y * scale + dy) * self.width + offset + x * scale) * 3;
                        for chunk in sheet[start..start + scale * 3].chunks_exact_mut(3) {
                            chunk.copy_from_slice(px);
                        }
                    }
                }
            }
            for (line, text) in wrap(&tile.caption, self.line_chars(), CAPTION_LINES).iter().enumerate() {
                let y = top + self.tile + GAP / 2 + line * LINE_HEIGHT;
                draw_text(&mut sheet, self.width, left, y, text, [0, 0, 0]);
            }
        }
        sheet
    }
}

/// Greedy word wrap into at most `lines` lines of `width` characters; a word longer than a
/// line is cut, and text that does not fit ends the last line with "..".
fn wrap(text: &str, width: usize, lines: usize) -> Vec<String> {
    let width = width.max(3);
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let word: String = word.chars().take(width).collect();
        if !current.is_empty() && current.len() + 1 + word.len() > width {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    if out.len() > lines {
        out.truncate(lines);
        if let Some(last) = out.last_mut() {
            last.truncate(width - 2);
            last.push_str("..");
        }
    }
    out
}

/// One cell of a sheet: an HWC RGB image of the sheet's image size and the text under it.
pub struct SheetTile {
    pub image: Vec<u8>,
    pub caption: String,
}

/// Writes a preview of samples `0..count` of `split` to `path` as a PNG. The file appears
/// whole or not at all (written atomically).
pub fn write_preview(path: &Path, cfg: &ShapesConfig, split: Split, count: usize) -> Result<()> {
    cfg.validate()?;
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(Error::invalid("write_preview", format!("count must be 1 to {MAX_COUNT}, got {count}")));
    }
    let tiles: Vec<SheetTile> = samples(cfg, split, 0..count as u64)
        .into_iter()
        .map(|Sample { image, caption, .. }| SheetTile { image, caption })
        .collect();
    write_sheet(path, cfg.image_size, &tiles)
}

/// Writes `tiles` (images of `image_size` pixels a side) as one PNG contact sheet, atomically.
pub fn write_sheet(path: &Path, image_size: usize, tiles: &[SheetTile]) -> Result<()> {
    if !(1..=MAX_COUNT).contains(&tiles.len()) {
        let count = tiles.len();
        return Err(Error::invalid("write_sheet", format!("count must be 1 to {MAX_COUNT}, got {count}")));
    }
    if let Some(bad) = tiles.iter().find(|t| t.image.len() != image_size * image_size * 3) {
        let detail = format!("a tile of {} bytes for {image_size} px RGB images", bad.image.len());
        return Err(Error::invalid("write_sheet", detail));
    }
    let layout = PreviewLayout::new(image_size, tiles.len());
    write_rgb_png(path, layout.width as u32, layout.height as u32, &layout.compose(tiles, image_size))
}
