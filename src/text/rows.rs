//! Fixed-context rows for the text tower: SOT, the ids, EOT, zero padding, and what happens
//! when a caption does not fit.

use rayon::prelude::*;

use super::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What to do with a caption whose `[SOT] + ids + [EOT]` is longer than the context: part of
/// a model's config, since weights trained one way read the other way's rows wrongly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Cut to the context and lose EOT, as MS-CLIP's code does. Such a row has no EOT, so argmax
    /// pooling lands on SOT (position 0): the reference's behaviour, kept on purpose (and every
    /// config from before the choice).
    #[default]
    Reference,
    /// Cut to the context and put EOT in the last slot, as open_clip and OpenAI CLIP's
    /// `clip.tokenize(truncate=True)` do, so every row pools at an EOT.
    ForceEot,
}

/// Padding id. It is also the id of "!" in CLIP's vocabulary; rows stay unambiguous because
/// padding only ever follows EOT.
const PAD: u32 = 0;

impl Tokenizer {
    /// One row of `context` ids: `[SOT] + encode(text) + [EOT]`, zero-padded, cut as
    /// `truncation` says. The context must hold at least SOT and EOT.
    pub fn tokenize(&self, text: &str, context: usize, truncation: Truncation) -> Result<Vec<u32>> {
        Ok(self.tokenize_and_tell(text, context, truncation)?.0)
    }

    /// [`Tokenizer::tokenize`], and whether the caption was cut to fit.
    pub fn tokenize_and_tell(&self, text: &str, context: usize, truncation: Truncation) -> Result<(Vec<u32>, bool)> {
        check_context("tokenize", context)?;
        let mut row = vec![PAD; context];
        let cut = self.fill_row(text, &mut row, truncation)?;
        Ok((row, cut))
    }

    /// [`Tokenizer::tokenize`] for each text, in parallel: a row-major `[texts.len(), context]`
    /// matrix.
    pub fn tokenize_batch(&self, texts: &[&str], context: usize, truncation: Truncation) -> Result<Vec<u32>> {
        const OP: &str = "tokenize_batch";
        check_context(OP, context)?;
        let len = texts
            .len()
            .checked_mul(context)
            .ok_or_else(|| Error::invalid(OP, format!("{} rows of {context} ids overflow", texts.len())))?;
        let mut rows = vec![PAD; len];
        rows.par_chunks_mut(context)
            .zip(texts.par_iter())
            .try_for_each(|(row, text)| self.fill_row(text, row, truncation).map(|_| ()))?;
        Ok(rows)
    }

    /// Writes one caption into a zeroed row; true when it had to be cut.
    fn fill_row(&self, text: &str, row: &mut [u32], truncation: Truncation) -> Result<bool> {
        let ids = self.encode(text)?;
        let fits = ids.len() + 2 <= row.len();
        let framed = std::iter::once(self.sot()).chain(ids).chain(std::iter::once(self.eot()));
        row.iter_mut().zip(framed).for_each(|(slot, id)| *slot = id);
        if !fits
            && truncation == Truncation::ForceEot
            && let Some(last) = row.last_mut()
        {
            *last = self.eot();
        }
        Ok(!fits)
    }
}

fn check_context(op: &'static str, context: usize) -> Result<()> {
    if context < 2 {
        return Err(Error::invalid(op, format!("context {context} cannot hold SOT and EOT")));
    }
    Ok(())
}

/// For each row of a row-major `[n, context]` token matrix, the position of the first
/// occurrence of its largest id. That is EOT (the largest id of every vocabulary here) and how
/// the reference pools the text tower; a row cut before its EOT ([`Truncation::Reference`])
/// pools at SOT, position 0, exactly as there.
pub fn eot_positions(tokens: &[u32], context: usize) -> Result<Vec<usize>> {
    const OP: &str = "eot_positions";
    if context == 0 || !tokens.len().is_multiple_of(context) {
        return Err(Error::shape(OP, format!("{} ids are not rows of context {context}", tokens.len())));
    }
    let first_max = |row: &[u32]| {
        row.iter()
            .enumerate()
            .fold((0, 0), |(best, best_id), (i, &id)| if id > best_id { (i, id) } else { (best, best_id) })
            .0
    };
    Ok(tokens.chunks(context).map(first_max).collect())
}
