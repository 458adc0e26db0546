//! OpenAI's CLIP vocabulary: 49,408 tokens, SOT 49406, EOT 49407.

use super::pipeline::clip_style;
use super::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The first 48,894 merges of `bpe_simple_vocab_16e6.txt`, one "left right" pair a line. The
/// build script copies them out of the `instant-clip-tokenizer` package (see
/// `build/clip_merges.rs`), so they come from the registry at build time, never at run time.
const MERGES: &str = include_str!(concat!(env!("OUT_DIR"), "/clip_merges.txt"));

/// Ids in OpenAI CLIP's vocabulary: the token rows a model needs to read it.
pub const CLIP_VOCAB: usize = 49_408;

impl Tokenizer {
    /// OpenAI CLIP's tokenizer, as used by CLIP, MS-CLIP and open_clip. Building it takes a few
    /// tens of milliseconds (the merge table is parsed), so make one and share it.
    pub fn clip() -> Result<Tokenizer> {
        let merges = MERGES
            .lines()
            .map(|line| {
                let (left, right) = line
                    .split_once(' ')
                    .ok_or_else(|| Error::format("embedded CLIP merges", format!("{line:?} is not a pair")))?;
                Ok((left.to_string(), right.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Tokenizer::wrap(clip_style(merges)?, "CLIP tokenizer")
    }
}
