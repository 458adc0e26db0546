//! The engine (`tokenizers`) set up as CLIP's tokenizer, from nothing but a merge list.

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::alphabet::{END_OF_WORD, EOT, SOT, base_symbols};
use crate::{Error, Result};

/// CLIP's word pattern: the special tokens, English contractions, letter runs, single digits,
/// and runs of anything else that is not whitespace. Whitespace only separates.
const WORDS: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP-style tokenizer over `merges` (pairs of symbols, highest priority first).
///
/// Ids: the 512 base symbols, then each merge's result in merge order (a result that an
/// earlier merge already produced keeps its id), then SOT and EOT, the two largest. This is
/// how OpenAI builds CLIP's 49,408-token vocabulary from its merges file. Words come from
/// [`WORDS`], each becomes byte symbols, and BPE marks the last one with `</w>`. Decoding
/// maps symbols back to bytes and each `</w>` to a space.
pub(crate) fn clip_style(merges: Vec<(String, String)>) -> Result<tokenizers::Tokenizer> {
    let mut vocab = Vocab::default();
    let merged = merges.iter().map(|(a, b)| format!("{a}{b}"));
    for symbol in base_symbols().into_iter().chain(merged) {
        let next = vocab.len() as u32;
        vocab.entry(symbol).or_insert(next);
    }
    for special in [SOT, EOT] {
        if vocab.contains_key(special) {
            return Err(Error::format("BPE merges", format!("a merge produces the special token {special}")));
        }
        vocab.insert(special.to_string(), vocab.len() as u32);
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .end_of_word_suffix(END_OF_WORD.to_string())
        .build()
        .map_err(|e| Error::format("BPE merges", e.to_string()))?;

    let engine_error = |e: tokenizers::Error| Error::format("CLIP tokenizer pipeline", e.to_string());
    let words = Split::new(SplitPattern::Regex(WORDS.to_string()), SplitDelimiterBehavior::Removed, true)
        .map_err(engine_error)?;
    let pre_tokenizer = PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::Split(words),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let decoder = DecoderSequence::new(vec![
        DecoderWrapper::ByteLevel(ByteLevel::default()),
        DecoderWrapper::Replace(Replace::new(END_OF_WORD, " ").map_err(engine_error)?),
    ]);

    let mut engine = tokenizers::Tokenizer::new(model);
    engine.with_pre_tokenizer(Some(pre_tokenizer)).with_decoder(Some(decoder));
    engine.add_special_tokens(&[AddedToken::from(SOT, true), AddedToken::from(EOT, true)]);
    Ok(engine)
}
