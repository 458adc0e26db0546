//! BPE vocabularies learnt from a caption corpus, for data too small or too unlike the web for
//! CLIP's 49,408 tokens.

use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::{AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Trainer};

use super::alphabet::{END_OF_WORD, base_symbols};
use super::clean::clean;
use super::pipeline::clip_style;
use super::tokenizer::Tokenizer;
use crate::{Error, Result};

const OP: &str = "train_bpe";

impl Tokenizer {
    /// Learns a BPE vocabulary of at most `vocab_size` tokens from `corpus`, one caption per
    /// item, read exactly as CLIP reads text: the same cleaning, word pattern, byte symbols and
    /// `</w>` word ends.
    ///
    /// The vocabulary is laid out like CLIP's: the 512 byte symbols (with and without `</w>`,
    /// ids as in CLIP, so any word still encodes), the learnt merges, then SOT and EOT as the
    /// two largest ids. It is smaller than `vocab_size` when the corpus runs out of pairs to
    /// merge; [`Tokenizer::vocab_size`] says what it is. The same corpus gives the same
    /// vocabulary: the base ids are fixed before training, so ties between equally frequent
    /// pairs always break the same way.
    pub fn train_bpe<'a>(corpus: impl IntoIterator<Item = &'a str>, vocab_size: usize) -> Result<Tokenizer> {
        let base = base_symbols();
        let minimum = base.len() + 2;
        if vocab_size < minimum {
            return Err(Error::config(format!(
                "{OP}: vocab_size {vocab_size} is below {minimum} (512 byte symbols, SOT and EOT)"
            )));
        }
        // Reading the corpus needs only the pipeline's word splitting, which has no merges.
        let reader = clip_style(Vec::new())?;
        let pre_tokenizer = reader.get_pre_tokenizer().ok_or_else(|| Error::invalid(OP, "pipeline without words"))?;
        let captions: Vec<String> = corpus.into_iter().map(clean).collect();

        // Passing the base symbols as the trainer's "special tokens" is what pins their ids to
        // 0..512 in CLIP's order; left to itself the trainer numbers `</w>` symbols in hash
        // order, which would make ties, and so the merges, differ from run to run.
        let mut trainer = BpeTrainer::builder()
            .vocab_size(vocab_size - 2)
            .show_progress(false)
            .special_tokens(base.into_iter().map(|s| AddedToken::from(s, true)).collect())
            .end_of_word_suffix(END_OF_WORD.to_string())
            .build();
        let words = |caption: &str| {
            let mut words = PreTokenizedString::from(caption);
            pre_tokenizer.pre_tokenize(&mut words)?;
            let splits = words.get_splits(OffsetReferential::Original, OffsetType::Byte);
            Ok(splits.into_iter().map(|(word, _, _)| word.to_string()).collect())
        };
        let engine_error = |e: tokenizers::Error| Error::invalid(OP, e.to_string());
        trainer.feed(captions.iter(), words).map_err(engine_error)?;
        let mut model = BPE::default();
        trainer.train(&mut model).map_err(engine_error)?;
        Tokenizer::wrap(clip_style(learnt_merges(&model)?)?, "trained BPE")
    }
}

/// The trainer's merges in priority order. The model only exposes them through its serialised
/// form; rebuilding from them gives the vocabulary the layout described on `train_bpe`.
fn learnt_merges(model: &BPE) -> Result<Vec<(String, String)>> {
    let mut json = serde_json::to_value(model).map_err(|e| Error::invalid(OP, e.to_string()))?;
    serde_json::from_value(json["merges"].take()).map_err(|e| Error::invalid(OP, format!("merges: {e}")))
}
