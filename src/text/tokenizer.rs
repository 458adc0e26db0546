//! The tokenizer type: where a vocabulary comes from and goes to, and text to ids and back.

use std::fs;
use std::path::Path;

use super::alphabet::{EOT, SOT};
use super::clean::clean;
use crate::files::write_atomically;
use crate::{Error, Result};

/// A CLIP-style BPE tokenizer: the `tokenizers` engine plus the ids of its two special tokens.
///
/// Every input goes through [`clean`] before the engine sees it. Ids run from 0 to the EOT id,
/// which is the largest (checked when a tokenizer is made): the text tower pools at the argmax
/// of a row, so that is where EOT must win.
#[derive(Clone)]
pub struct Tokenizer {
    engine: tokenizers::Tokenizer,
    sot: u32,
    eot: u32,
}

impl Tokenizer {
    /// Wraps an engine, looking up SOT and EOT. `origin` names the source in errors. Padding and
    /// truncation settings the engine came with are dropped: rows are framed by `tokenize`.
    pub(crate) fn wrap(mut engine: tokenizers::Tokenizer, origin: &str) -> Result<Tokenizer> {
        let id = |token: &str| {
            engine.token_to_id(token).ok_or_else(|| {
                Error::format(origin, format!("no {token} token: a CLIP-style tokenizer needs both {SOT} and {EOT}"))
            })
        };
        let (sot, eot) = (id(SOT)?, id(EOT)?);
        if let Some(largest) = engine.get_vocab(true).into_values().max().filter(|&largest| largest != eot) {
            return Err(Error::format(
                origin,
                format!("{EOT} has id {eot} but the largest id is {largest}; EOT pooling takes the argmax of the ids"),
            ));
        }
        engine.with_padding(None).with_truncation(None).map_err(|e| Error::format(origin, e.to_string()))?;
        Ok(Tokenizer { engine, sot, eot })
    }

    /// Loads a `tokenizer.json` (the `tokenizers` format, as written by [`Tokenizer::save`] or by
    /// Hugging Face tools) that has `<|startoftext|>` and `<|endoftext|>` tokens, the latter
    /// with the largest id.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let json = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let origin = path.display().to_string();
        let engine: tokenizers::Tokenizer =
            json.parse().map_err(|e| Error::format(&origin, format!("not a tokenizer.json: {e}")))?;
        Tokenizer::wrap(engine, &origin)
    }

    /// Writes the tokenizer as `tokenizer.json`, readable by [`Tokenizer::from_file`]. The file
    /// is written atomically, so a reader never sees half of it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.engine.to_string(true).map_err(|e| Error::format("tokenizer.json", e.to_string()))?;
        write_atomically(path, json.as_bytes())
    }

    /// The number of ids, 0 through EOT: the rows a token embedding needs.
    pub fn vocab_size(&self) -> usize {
        self.eot as usize + 1
    }

    /// The start-of-text id (49406 for CLIP).
    pub fn sot(&self) -> u32 {
        self.sot
    }

    /// The end-of-text id (49407 for CLIP), the largest id.
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// Per id, whether its token ends a word (CLIP's BPE marks a word's last token with `</w>`):
    /// what whole-word masking groups tokens by. The special tokens end none.
    pub fn word_ends(&self) -> Vec<bool> {
        (0..self.vocab_size() as u32)
            .map(|id| self.engine.id_to_token(id).is_some_and(|token| token.ends_with("</w>")))
            .collect()
    }

    /// The BPE ids of `text` after [`clean`], without SOT or EOT.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.engine.encode(clean(text), false).map_err(|e| Error::format("encode", e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text back from ids. SOT is skipped and decoding stops at the first EOT, since what
    /// follows it in a row is padding. Words come out separated by single spaces, punctuation
    /// included ("a photo of a dog ."), as in the reference.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id > self.eot) {
            return Err(Error::index("decode", format!("id {bad} is outside the vocabulary of {}", self.vocab_size())));
        }
        let text: Vec<u32> =
            ids.iter().copied().take_while(|&id| id != self.eot).filter(|&id| id != self.sot).collect();
        let decoded = self.engine.decode(&text, false).map_err(|e| Error::format("decode", e.to_string()))?;
        // Every word ends in `</w>`, decoded as a space; the last one has nothing to separate.
        Ok(decoded.strip_suffix(' ').map(str::to_string).unwrap_or(decoded))
    }
}

/// The sizes and special ids; the engine's own `Debug` would print the whole vocabulary.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .finish()
    }
}
