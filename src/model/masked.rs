//! The inputs of masked modelling (OneR's MLM and MIM, `../shared/reference/oner-notes.md`
//! sections 2-4): which caption tokens and image patches a step hides, and the tables the
//! model's kernels read to hide them and to pick the rows it predicts.
//!
//! The host draws the masks ([`MaskDraw`], `src/train/masking.rs`); [`MaskedInputs`] turns a draw
//! into tables of fixed length for a captured graph (padded: predicted rows up to a capacity,
//! targets [`IGNORE_TARGET`] on the padding) and rewrites them in place for the next step's draw.
//!
//! - Captions: the batch's captions once per masked copy, packed as the text tower packs
//!   captions; a masked token's id is replaced (by the [MASK] id, one past the vocabulary, which
//!   selects a learned embedding appended to the token table; by a random id; or by itself), and
//!   the predicted rows are the packed rows of the masked tokens.
//! - Patches: each image's masked patch tokens (the same number per image) replaced by a learned
//!   mask token after the stem; the predicted rows are those patches' rows of the trunk's output,
//!   and the targets their pixels.

use super::packing::{CaptionPacking, PackCapacity};
use crate::error::{Error, Result};
use crate::ops::IGNORE_TARGET;
use crate::tensor::Table;

/// One step's masks, drawn on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskDraw {
    pub captions: Option<CaptionMasks>,
    pub patches: Option<PatchMasks>,
}

/// MLM's masked copies of a batch's captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionMasks {
    /// The batch's token rows once per copy, [copies * batch, context] (copy-major): a predicted
    /// token replaced by the [MASK] id (the vocabulary size), by a random id, or kept.
    pub rows: Vec<u32>,
    /// The same shape: a predicted token's original id, [`IGNORE_TARGET`] everywhere else.
    pub targets: Vec<u32>,
    pub copies: usize,
}

/// MIM's masked patches.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMasks {
    /// Per image, the row-major grid indices of its masked patches, `per_image` of them:
    /// [batch * per_image].
    pub patches: Vec<u32>,
    pub per_image: usize,
}

/// Fixed table lengths for a captured graph: any batch whose captions fit `captions` (one copy's
/// packing) fits, as long as no more than `predicted_tokens` tokens of all copies are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskCapacity {
    pub captions: PackCapacity,
    pub predicted_tokens: usize,
}

impl MaskCapacity {
    /// Room for the masked copies of captions packed to `captions`: at most `ratio` of each
    /// caption's tokens rounded, at least one, is masked (src/train/masking.rs), so `ratio` of
    /// the packed tokens plus one per caption and copy bounds every batch that fits.
    pub fn around(captions: PackCapacity, batch: usize, copies: usize, ratio: f64) -> Self {
        let predicted_tokens = copies * ((ratio * captions.tokens as f64).ceil() as usize + batch);
        MaskCapacity { captions, predicted_tokens }
    }
}

/// The tables of one step's masks, as the model reads them.
#[derive(Debug, Clone)]
pub struct MaskedInputs {
    pub captions: Option<MaskedCaptions>,
    pub patches: Option<MaskedPatches>,
}

#[derive(Debug, Clone)]
pub struct MaskedCaptions {
    /// The copies packed as the text tower runs captions; its ids are the masked ones.
    pub packing: CaptionPacking,
    /// The packed rows the head predicts, padded with row 0.
    pub rows: Table,
    /// Each predicted row's original id; [`IGNORE_TARGET`] on the padding.
    pub targets: Table,
    copies: usize,
    /// The rows' fixed length, when padded.
    capacity: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct MaskedPatches {
    /// Per patch token ([batch * grid^2]), its row in the stem's patch rows with the mask token's
    /// row after them (the row `batch * grid^2` for a masked patch).
    pub tokens: Table,
    /// Per masked patch, its row in the trunk's output ([batch * (1 + grid^2)], CLS first).
    pub rows: Table,
    /// Per masked patch, its row among the images' patches ([batch * grid^2]): its pixels.
    pub pixels: Table,
    patches_per_image: usize,
}

/// How the towers' shapes enter the tables.
#[derive(Debug, Clone, Copy)]
pub struct MaskGeometry {
    pub context: usize,
    pub vocab: usize,
    pub encoder: super::TextEncoder,
    /// Patches per image (grid^2).
    pub patches_per_image: usize,
}

impl MaskedInputs {
    /// The tables of `draw` for a batch of `tokens` (rows of `context` ids), padded to
    /// `capacity` when given.
    pub fn new(
        tokens: &[u32],
        draw: &MaskDraw,
        geometry: MaskGeometry,
        capacity: Option<MaskCapacity>,
    ) -> Result<Self> {
        let captions =
            draw.captions.as_ref().map(|masks| MaskedCaptions::new(tokens, masks, geometry, capacity)).transpose()?;
        let patches =
            draw.patches.as_ref().map(|masks| MaskedPatches::new(masks, geometry.patches_per_image)).transpose()?;
        Ok(MaskedInputs { captions, patches })
    }

    /// Writes another step's draw (for a batch that fits the capacity) into these tables.
    pub fn rewrite(&self, tokens: &[u32], draw: &MaskDraw, geometry: MaskGeometry) -> Result<()> {
        match (&self.captions, &draw.captions) {
            (Some(tables), Some(masks)) => tables.rewrite(tokens, masks, geometry)?,
            (None, None) => {}
            _ => return Err(Error::invalid("masked modelling", "a draw with other masks than the captured one's")),
        }
        match (&self.patches, &draw.patches) {
            (Some(tables), Some(masks)) => tables.rewrite(masks, geometry.patches_per_image),
            (None, None) => Ok(()),
            _ => Err(Error::invalid("masked modelling", "a draw with other masks than the captured one's")),
        }
    }

    /// Every table on `device` now, before a graph capture (see [`CaptionPacking::upload`]).
    pub fn upload(&self, device: crate::tensor::Device) -> Result<()> {
        if let Some(c) = &self.captions {
            c.packing.upload(device)?;
            c.rows.device_ptr(device)?;
            c.targets.device_ptr(device)?;
        }
        if let Some(p) = &self.patches {
            for table in [&p.tokens, &p.rows, &p.pixels] {
                table.device_ptr(device)?;
            }
        }
        Ok(())
    }
}

/// The masked copies' packed ids, and the predicted rows with their targets, padded to
/// `capacity` (at least one row: a row ignored when nothing is masked).
struct CaptionWords {
    ids: Vec<u32>,
    rows: Vec<u32>,
    targets: Vec<u32>,
}

impl MaskedCaptions {
    fn new(tokens: &[u32], masks: &CaptionMasks, g: MaskGeometry, capacity: Option<MaskCapacity>) -> Result<Self> {
        let pack_capacity = capacity.map(|c| PackCapacity {
            tokens: masks.copies * c.captions.tokens,
            pad_sequences: masks.copies * c.captions.pad_sequences,
        });
        let packing = CaptionPacking::new(&tokens.repeat(masks.copies), g.context, g.vocab, g.encoder, pack_capacity)?;
        let words = Self::words(&packing, masks, g, capacity.map(|c| c.predicted_tokens))?;
        Ok(MaskedCaptions {
            packing: CaptionPacking { ids: Table::new(words.ids), ..packing },
            rows: Table::new(words.rows),
            targets: Table::new(words.targets),
            copies: masks.copies,
            capacity: capacity.map(|c| c.predicted_tokens),
        })
    }

    fn rewrite(&self, tokens: &[u32], masks: &CaptionMasks, g: MaskGeometry) -> Result<()> {
        if masks.copies != self.copies {
            return Err(Error::invalid("mlm", format!("{} masked copies for {}", masks.copies, self.copies)));
        }
        // The original ids first (the packing derives positions and offsets from them), then the
        // masked ids over them.
        self.packing.rewrite(&tokens.repeat(masks.copies), g.vocab)?;
        let words = Self::words(&self.packing, masks, g, self.capacity)?;
        self.packing.ids.rewrite(&words.ids)?;
        self.rows.rewrite(&words.rows)?;
        self.targets.rewrite(&words.targets)
    }

    fn words(
        packing: &CaptionPacking,
        masks: &CaptionMasks,
        g: MaskGeometry,
        capacity: Option<usize>,
    ) -> Result<CaptionWords> {
        let expected = packing.captions() * g.context;
        if masks.rows.len() != expected || masks.targets.len() != expected {
            let detail = format!("masked rows of {} and {} ids for {expected}", masks.rows.len(), masks.targets.len());
            return Err(Error::shape("mlm", detail));
        }
        if let Some(bad) = masks.rows.iter().find(|&&id| id as usize > g.vocab) {
            return Err(Error::index("mlm", format!("masked id {bad} for a vocabulary of {} and its [MASK]", g.vocab)));
        }
        let ids = packing.packed_values(&masks.rows, 0);
        let packed_targets = packing.packed_values(&masks.targets, IGNORE_TARGET);
        let (mut rows, mut targets): (Vec<u32>, Vec<u32>) = packed_targets
            .iter()
            .enumerate()
            .filter(|(_, t)| **t != IGNORE_TARGET)
            .map(|(row, &t)| (row as u32, t))
            .unzip();
        let length = capacity.unwrap_or(rows.len()).max(1);
        if rows.len() > length {
            return Err(Error::invalid(
                "mlm",
                format!("{} masked tokens do not fit the captured capacity of {length}", rows.len()),
            ));
        }
        rows.resize(length, 0);
        targets.resize(length, IGNORE_TARGET);
        Ok(CaptionWords { ids, rows, targets })
    }
}

impl MaskedPatches {
    fn new(masks: &PatchMasks, patches_per_image: usize) -> Result<Self> {
        let [tokens, rows, pixels] = Self::words(masks, patches_per_image)?;
        let (tokens, rows, pixels) = (Table::new(tokens), Table::new(rows), Table::new(pixels));
        Ok(MaskedPatches { tokens, rows, pixels, patches_per_image })
    }

    fn rewrite(&self, masks: &PatchMasks, patches_per_image: usize) -> Result<()> {
        if patches_per_image != self.patches_per_image {
            return Err(Error::shape(
                "mim",
                format!("{patches_per_image} patches per image for {}", self.patches_per_image),
            ));
        }
        let [tokens, rows, pixels] = Self::words(masks, patches_per_image)?;
        self.tokens.rewrite(&tokens)?;
        self.rows.rewrite(&rows)?;
        self.pixels.rewrite(&pixels)
    }

    /// The token substitutions, trunk rows and pixel rows of `masks`.
    fn words(masks: &PatchMasks, n: usize) -> Result<[Vec<u32>; 3]> {
        let k = masks.per_image;
        if k == 0 || k > n || !masks.patches.len().is_multiple_of(k) {
            let detail = format!("{} masked patches, {k} per image, of {n}", masks.patches.len());
            return Err(Error::shape("mim", detail));
        }
        if let Some(bad) = masks.patches.iter().find(|&&p| p as usize >= n) {
            return Err(Error::index("mim", format!("patch {bad} of an image of {n} patches")));
        }
        let batch = masks.patches.len() / k;
        let mask_row = (batch * n) as u32;
        let mut tokens: Vec<u32> = (0..mask_row).collect();
        let (mut rows, mut pixels) = (Vec::with_capacity(batch * k), Vec::with_capacity(batch * k));
        for (b, image) in masks.patches.chunks(k).enumerate() {
            for &patch in image {
                let at = (b * n) as u32 + patch;
                tokens[at as usize] = mask_row;
                rows.push((b * (n + 1) + 1) as u32 + patch);
                pixels.push(at);
            }
        }
        Ok([tokens, rows, pixels])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TextEncoder;

    fn geometry() -> MaskGeometry {
        MaskGeometry { context: 5, vocab: 10, encoder: TextEncoder::Bidirectional, patches_per_image: 4 }
    }

    #[test]
    fn masked_copies_pack_like_captions_and_predict_their_masked_tokens() {
        // Two captions (SOT 8, EOT 9), two copies: copy 0 masks token 1 of caption 0, copy 1
        // token 2 of caption 1 (replaced by a random id, 3).
        let tokens = [8, 1, 2, 9, 0, 8, 4, 5, 6, 9];
        let rows = vec![8, 10, 2, 9, 0, 8, 4, 5, 6, 9, 8, 1, 2, 9, 0, 8, 4, 3, 6, 9];
        let mut targets = vec![IGNORE_TARGET; 20];
        targets[1] = 1;
        targets[17] = 5;
        let masks = CaptionMasks { rows, targets, copies: 2 };
        let draw = MaskDraw { captions: Some(masks), patches: None };
        let inputs = MaskedInputs::new(&tokens, &draw, geometry(), None).unwrap();
        let c = inputs.captions.unwrap();
        assert_eq!(c.packing.ids.words().to_vec(), vec![8, 10, 2, 9, 8, 4, 5, 6, 9, 8, 1, 2, 9, 8, 4, 3, 6, 9]);
        assert_eq!(c.packing.offsets.words().to_vec(), vec![0, 4, 9, 13, 18]);
        assert_eq!(c.rows.words().to_vec(), vec![1, 15]);
        assert_eq!(c.targets.words().to_vec(), vec![1, 5]);
    }

    #[test]
    fn padded_tables_keep_their_length_when_rewritten() {
        let tokens = [8, 1, 2, 9, 0, 8, 4, 9, 0, 0];
        let captions = PackCapacity { tokens: 64, pad_sequences: 13 };
        let capacity = MaskCapacity::around(captions, 2, 1, 0.15);
        assert_eq!(capacity.predicted_tokens, 10 + 2);
        let mut targets = vec![IGNORE_TARGET; 10];
        targets[2] = 2;
        let rows = vec![8, 1, 10, 9, 0, 8, 4, 9, 0, 0];
        let draw = MaskDraw { captions: Some(CaptionMasks { rows, targets, copies: 1 }), patches: None };
        let inputs = MaskedInputs::new(&tokens, &draw, geometry(), Some(capacity)).unwrap();
        let c = inputs.captions.as_ref().unwrap();
        assert_eq!(c.rows.len(), 12);
        assert_eq!(c.targets.words()[..2], [2, IGNORE_TARGET]);
        // Another batch: the second caption's token 1 masked.
        let tokens = [8, 3, 9, 0, 0, 8, 4, 5, 9, 0];
        let mut targets = vec![IGNORE_TARGET; 10];
        targets[6] = 4;
        let rows = vec![8, 3, 9, 0, 0, 8, 10, 5, 9, 0];
        let draw = MaskDraw { captions: Some(CaptionMasks { rows, targets, copies: 1 }), patches: None };
        inputs.rewrite(&tokens, &draw, geometry()).unwrap();
        assert_eq!(c.packing.ids.words()[..7], [8, 3, 9, 8, 10, 5, 9]);
        assert_eq!((c.rows.words()[0], c.targets.words()[0]), (4, 4));
        assert_eq!(c.rows.len(), 12);
    }

    #[test]
    fn masked_patches_name_their_token_trunk_and_pixel_rows() {
        let masks = PatchMasks { patches: vec![1, 3, 0, 2], per_image: 2 };
        let draw = MaskDraw { captions: None, patches: Some(masks) };
        let p = MaskedInputs::new(&[], &draw, geometry(), None).unwrap().patches.unwrap();
        assert_eq!(p.tokens.words().to_vec(), vec![0, 8, 2, 8, 8, 5, 8, 7]);
        assert_eq!(p.rows.words().to_vec(), vec![2, 4, 6, 8]);
        assert_eq!(p.pixels.words().to_vec(), vec![1, 3, 4, 6]);
        let bad = PatchMasks { patches: vec![4, 0], per_image: 2 };
        assert!(MaskedPatches::new(&bad, 4).unwrap_err().to_string().contains("patch 4"));
    }
}
