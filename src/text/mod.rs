//! Captions to token ids: the CLIP byte-level BPE tokenizer, and BPE vocabularies of the same
//! kind trained on a small caption corpus, both run by the `tokenizers` crate.
//!
//! - [`Tokenizer`]: OpenAI's CLIP vocabulary ([`Tokenizer::clip`]), any `tokenizer.json`
//!   ([`Tokenizer::from_file`]), or one trained here ([`Tokenizer::train_bpe`]); `encode`, `decode`,
//!   and `tokenize` / `tokenize_batch` for the fixed-context rows a text tower reads.
//! - [`clean`]: the caption cleaning every tokenizer here applies first.
//! - [`eot_positions`]: where each row's EOT sits, found the way the reference pools: argmax.
//!
//! Layout of the files: `alphabet` (the byte symbols and special tokens CLIP's vocabulary is
//! built from), `pipeline` (the engine configured the CLIP way from a merge list), `clip`
//! (the embedded OpenAI merges), `train`, `tokenizer` (loading, saving, encode, decode) and
//! `rows` (SOT/EOT framing, truncation, padding, EOT positions).

mod alphabet;
mod clean;
mod clip;
mod pipeline;
mod rows;
mod tokenizer;
mod train;

pub use clean::clean;
pub use clip::CLIP_VOCAB;
pub use rows::{Truncation, eot_positions};
pub use tokenizer::Tokenizer;
