//! How a batch of captions enters the text tower: each caption trimmed through its pooled token
//! and the captions packed back to back as one sequence (varlen attention), described by the
//! tables the kernels read (token ids, positions, sequence offsets, pooled rows).
//!
//! CLIP's causal encoder pools at the first occurrence of the largest id in each row (EOT, the
//! largest id of the vocabulary; a caption cut before its EOT pools at SOT, as in the reference).
//! Under the causal mask nothing after that position can change it, so the trim is exact and no
//! FLOPs go to padding. The bidirectional encoder ([`TextEncoder::Bidirectional`]) keeps each
//! caption through its EOT (a row cut before its EOT whole: it has no padding) and pools at its
//! first token; the trim is its key-padding mask.
//!
//! A captured training graph ([`crate::train::GraphStep`]) needs the same shapes at every
//! launch, while the number of caption tokens changes from batch to batch. [`PackCapacity`]
//! fixes them: the packed captions are followed by padding tokens up to a fixed total, split
//! into a fixed number of padding sequences of at most a context each. Padding rows are never
//! pooled, so they get zero gradients, and every table keeps its length: the next batch is
//! written into the captured tables ([`CaptionPacking::rewrite`]).

use super::config::TextEncoder;
use crate::backend::AttnMask;
use crate::error::{Error, Result};
use crate::tensor::Table;
use crate::text::eot_positions;

/// Fixed sizes of a padded packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackCapacity {
    /// Caption and padding tokens together.
    pub tokens: usize,
    /// Padding sequences after the captions, each at most a context long, some maybe empty.
    pub pad_sequences: usize,
}

impl PackCapacity {
    /// Room for `tokens` caption tokens with `slack` more (rounded up to a multiple of 64), and
    /// enough padding sequences for twice the slack: batches within about `slack` tokens of this
    /// one, either way, fit.
    pub fn around(tokens: usize, slack: usize, context: usize) -> Self {
        let total = (tokens + slack).next_multiple_of(64);
        PackCapacity { tokens: total, pad_sequences: (total - tokens + slack).div_ceil(context).max(1) }
    }

    /// Whether a batch of `tokens` caption tokens fits.
    pub fn fits(&self, tokens: usize, context: usize) -> bool {
        tokens <= self.tokens && self.tokens - tokens <= self.pad_sequences * context
    }
}

/// A batch's captions as the text tower runs them.
#[derive(Debug, Clone)]
pub struct CaptionPacking {
    /// Per packed token: its id and its position in its caption.
    pub ids: Table,
    pub positions: Table,
    /// Cumulative offsets of the sequences (captions, then any padding sequences).
    pub offsets: Table,
    /// Per caption, the row of its pooled token among the packed tokens.
    pub pooled_rows: Table,
    pub context: usize,
    /// Fixed sizes when padded, for a captured graph.
    pub capacity: Option<PackCapacity>,
    /// Whether attention is causal and which token is pooled.
    pub encoder: TextEncoder,
}

/// The host values of one packing.
struct Words {
    ids: Vec<u32>,
    positions: Vec<u32>,
    offsets: Vec<u32>,
    pooled_rows: Vec<u32>,
}

/// The last packed position of each caption of `tokens` (rows of `context` ids).
fn caption_ends(tokens: &[u32], context: usize, encoder: TextEncoder) -> Result<Vec<usize>> {
    let eots = eot_positions(tokens, context)?;
    Ok(match encoder {
        TextEncoder::Causal => eots,
        // A row whose largest id is its first (SOT) was cut before its EOT and has no padding.
        TextEncoder::Bidirectional => eots.into_iter().map(|eot| if eot == 0 { context - 1 } else { eot }).collect(),
    })
}

/// The number of tokens the captions of `tokens` (rows of `context` ids) take packed.
pub fn packed_tokens(tokens: &[u32], context: usize, encoder: TextEncoder) -> Result<usize> {
    Ok(caption_ends(tokens, context, encoder)?.iter().map(|&last| last + 1).sum())
}

fn pack(
    tokens: &[u32],
    context: usize,
    vocab: usize,
    encoder: TextEncoder,
    capacity: Option<PackCapacity>,
) -> Result<Words> {
    if tokens.is_empty() || !tokens.len().is_multiple_of(context) {
        return Err(Error::shape(
            "encode_text",
            format!("{} token ids are not a whole number of rows of {context}", tokens.len()),
        ));
    }
    if let Some(bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::index("encode_text", format!("token id {bad} for a vocabulary of {vocab}")));
    }
    let mut w = Words { ids: Vec::new(), positions: Vec::new(), offsets: vec![0], pooled_rows: Vec::new() };
    for (row, &last) in tokens.chunks(context).zip(&caption_ends(tokens, context, encoder)?) {
        let first = w.ids.len() as u32;
        w.ids.extend_from_slice(&row[..=last]);
        w.positions.extend(0..=last as u32);
        w.offsets.push(w.ids.len() as u32);
        w.pooled_rows.push(match encoder {
            TextEncoder::Causal => w.ids.len() as u32 - 1,
            TextEncoder::Bidirectional => first,
        });
    }
    if let Some(capacity) = capacity {
        let used = w.ids.len();
        if !capacity.fits(used, context) {
            return Err(Error::invalid(
                "encode_text",
                format!("{used} caption tokens do not fit a packing of {capacity:?} (context {context})"),
            ));
        }
        let mut left = capacity.tokens - used;
        for _ in 0..capacity.pad_sequences {
            let len = left.min(context);
            // Any valid id: padding rows are never pooled.
            w.ids.extend(std::iter::repeat_n(0, len));
            w.positions.extend(0..len as u32);
            w.offsets.push(w.ids.len() as u32);
            left -= len;
        }
    }
    Ok(w)
}

impl CaptionPacking {
    /// `tokens` (rows of `context` ids below `vocab`) packed for `encoder`, with `capacity`'s
    /// padding when given.
    pub fn new(
        tokens: &[u32],
        context: usize,
        vocab: usize,
        encoder: TextEncoder,
        capacity: Option<PackCapacity>,
    ) -> Result<Self> {
        let w = pack(tokens, context, vocab, encoder, capacity)?;
        Ok(CaptionPacking {
            ids: Table::new(w.ids),
            positions: Table::new(w.positions),
            offsets: Table::new(w.offsets),
            pooled_rows: Table::new(w.pooled_rows),
            context,
            capacity,
            encoder,
        })
    }

    /// Writes the packing of another batch (of the same number of captions, fitting the same
    /// capacity) into these tables, in place.
    pub fn rewrite(&self, tokens: &[u32], vocab: usize) -> Result<()> {
        let capacity =
            self.capacity.ok_or_else(|| Error::invalid("encode_text", "only a padded packing is rewritten"))?;
        let w = pack(tokens, self.context, vocab, self.encoder, Some(capacity))?;
        if w.pooled_rows.len() != self.captions() {
            return Err(Error::shape(
                "encode_text",
                format!("{} captions for {}", w.pooled_rows.len(), self.captions()),
            ));
        }
        self.ids.rewrite(&w.ids)?;
        self.positions.rewrite(&w.positions)?;
        self.offsets.rewrite(&w.offsets)?;
        self.pooled_rows.rewrite(&w.pooled_rows)
    }

    /// Every table the kernels read, on `device` now: before a graph capture, so that the
    /// graph reads them rather than holding the bytes they had.
    pub fn upload(&self, device: crate::tensor::Device) -> Result<()> {
        for table in [&self.ids, &self.positions, &self.offsets, &self.pooled_rows] {
            table.device_ptr(device)?;
        }
        Ok(())
    }

    /// Per packed token, the value at its caption's row and position in `rows` (row-major
    /// [captions, context], shaped as the packed tokens were), `pad` on the padding tokens.
    pub fn packed_values(&self, rows: &[u32], pad: u32) -> Vec<u32> {
        let (offsets, positions) = (self.offsets.words(), self.positions.words());
        let mut values = vec![pad; self.tokens()];
        for caption in 0..self.captions() {
            for i in offsets[caption] as usize..offsets[caption + 1] as usize {
                values[i] = rows[caption * self.context + positions[i] as usize];
            }
        }
        values
    }

    pub fn captions(&self) -> usize {
        self.pooled_rows.len()
    }

    /// Packed tokens, padding included.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// The longest a sequence may be in this packing or any rewrite of it: a padded packing's
    /// launches are sized for a whole context.
    pub fn longest_bound(&self) -> Option<usize> {
        self.capacity.map(|_| self.context)
    }

    /// Attention within each sequence, causal for the causal encoder.
    pub fn mask(&self) -> AttnMask {
        self.mask_with(self.offsets.clone(), 0, self.longest_bound())
    }

    /// A mask over packed sequences at `offsets` whose first `full` attend in full and the rest
    /// as the encoder says.
    pub fn mask_with(&self, offsets: Table, full: usize, longest_bound: Option<usize>) -> AttnMask {
        AttnMask {
            causal: self.encoder == TextEncoder::Causal,
            first_causal_sequence: full,
            sequence_offsets: Some(offsets.words().iter().map(|&o| o as usize).collect()),
            offsets_table: Some(offsets),
            longest_bound,
            key_lengths: None,
            segments: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of context 6 with EOT = 9 (the largest id).
    const TOKENS: [u32; 12] = [8, 3, 9, 0, 0, 0, 8, 4, 5, 6, 9, 0];

    #[test]
    fn exact_packing_trims_each_caption_at_its_pooled_token() {
        let p = CaptionPacking::new(&TOKENS, 6, 10, TextEncoder::Causal, None).unwrap();
        assert_eq!(&*p.ids.words(), &[8, 3, 9, 8, 4, 5, 6, 9]);
        assert_eq!(&*p.positions.words(), &[0, 1, 2, 0, 1, 2, 3, 4]);
        assert_eq!(&*p.offsets.words(), &[0, 3, 8]);
        assert_eq!(&*p.pooled_rows.words(), &[2, 7]);
        assert_eq!(p.longest_bound(), None);
    }

    #[test]
    fn padded_packing_keeps_its_sizes_across_rewrites() {
        let capacity = PackCapacity { tokens: 16, pad_sequences: 2 };
        let p = CaptionPacking::new(&TOKENS, 6, 10, TextEncoder::Causal, Some(capacity)).unwrap();
        // 8 caption tokens, then 8 padding tokens as sequences of 6 and 2.
        assert_eq!(&*p.offsets.words(), &[0, 3, 8, 14, 16]);
        assert_eq!(&p.positions.words()[8..], &[0, 1, 2, 3, 4, 5, 0, 1]);
        assert_eq!(p.longest_bound(), Some(6));
        let shorter = [8, 9, 0, 0, 0, 0, 8, 8, 9, 0, 0, 0];
        p.rewrite(&shorter, 10).unwrap();
        assert_eq!(&*p.offsets.words(), &[0, 2, 5, 11, 16]);
        assert_eq!(&*p.pooled_rows.words(), &[1, 4]);
        assert_eq!(p.tokens(), 16);
        // 3 tokens leave 13 to pad: more than two sequences of 6 hold.
        assert!(!capacity.fits(3, 6));
        assert!(p.rewrite(&[9, 0, 0, 0, 0, 0, 8, 8, 9, 0, 0, 0], 10).is_ok());
        assert!(p.rewrite(&TOKENS[..6], 10).is_err(), "one caption for two");
    }

    #[test]
    fn bidirectional_packing_pools_each_caption_at_its_first_token() {
        // The second row was cut before its EOT (its largest id is SOT, 8): kept whole.
        let tokens = [8, 3, 9, 0, 0, 0, 8, 4, 5, 6, 7, 1];
        let p = CaptionPacking::new(&tokens, 6, 10, TextEncoder::Bidirectional, None).unwrap();
        assert_eq!(&*p.ids.words(), &[8, 3, 9, 8, 4, 5, 6, 7, 1]);
        assert_eq!(&*p.offsets.words(), &[0, 3, 9]);
        assert_eq!(&*p.pooled_rows.words(), &[0, 3]);
        assert_eq!(packed_tokens(&tokens, 6, TextEncoder::Bidirectional).unwrap(), 9);
        assert!(!p.mask().causal);
        // The causal encoder pools that row at its SOT and trims it there.
        assert_eq!(packed_tokens(&tokens, 6, TextEncoder::Causal).unwrap(), 4);
    }

    #[test]
    fn capacity_around_a_batch_fits_batches_near_it() {
        let c = PackCapacity::around(1000, 100, 77);
        assert_eq!(c.tokens, 1152);
        assert!(c.fits(1000, 77) && c.fits(1100, 77) && c.fits(900, 77));
        assert!(!c.fits(1153, 77));
    }
}
