//! Drawing each step's masks for masked modelling (`--loss mlm`, `--loss mim`): a pure function
//! of the run's seed and the step, as the batch is, so a resumed run masks as the uninterrupted
//! one did.
//!
//! Captions, as OneR's collator (oner-notes.md sections 4-5, after BERT's whole-word masking):
//! per caption, the words between its SOT and EOT (a word: tokens up to one that ends a word,
//! `</w>` in CLIP's BPE) are visited in random order and taken whole while the masked tokens stay
//! within `ratio` of the caption's word tokens (rounded, at least one); each masked token becomes
//! [MASK] (80%), a random word token (10%) or stays (10%). Every caption is masked `copies` times,
//! independently.
//!
//! Patches: `ratio` of each image's patches (rounded, at least one), drawn uniformly without
//! replacement, as MAE draws them.

use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::{CaptionMasks, MaskDraw, ModelConfig, PatchMasks};
use crate::ops::IGNORE_TARGET;
use crate::tensor::Rng;
use crate::text::Tokenizer;

/// Mixed into the seed so masks never share a stream with the data or the init.
const MASK_STREAM: u64 = 0x6d61_736b_6564_2121;
/// Multiplied by the rank and mixed in, so ranks never draw one stream.
const RANK_STREAM: u64 = 0xD1B5_4A32_D192_ED03;

/// BERT's split of the masked tokens: replaced by [MASK], by a random token, or kept.
const TO_MASK: f64 = 0.8;
const TO_RANDOM: f64 = 0.1;

pub struct Masker {
    captions: Option<CaptionMasking>,
    patches: Option<PatchMasking>,
    seed: u64,
}

struct CaptionMasking {
    /// Per token id, whether it ends a word.
    word_ends: Vec<bool>,
    sot: u32,
    eot: u32,
    /// The [MASK] id: the model's vocabulary size.
    mask_id: u32,
    ratio: f64,
    copies: usize,
    context: usize,
}

struct PatchMasking {
    patches_per_image: usize,
    per_image: usize,
}

impl Masker {
    /// The masker of a run of `config` on `model`, None when no masked objective is on.
    pub fn new(config: &TrainConfig, model: &ModelConfig, tokenizer: &Tokenizer) -> Result<Option<Masker>> {
        let (mlm, mim) = config.objectives.masked_heads();
        if !mlm && !mim {
            return Ok(None);
        }
        if tokenizer.vocab_size() > model.text.vocab {
            return Err(Error::config(format!(
                "the tokenizer's {} ids do not fit the model's vocabulary of {}",
                tokenizer.vocab_size(),
                model.text.vocab
            )));
        }
        let captions = mlm.then(|| CaptionMasking {
            word_ends: tokenizer.word_ends(),
            sot: tokenizer.sot(),
            eot: tokenizer.eot(),
            mask_id: model.text.vocab as u32,
            ratio: config.mlm_ratio,
            copies: config.mlm_copies,
            context: model.text.context,
        });
        let grid = model.vision.grid();
        let patches = mim.then(|| PatchMasking {
            patches_per_image: grid * grid,
            per_image: ((config.mim_ratio * (grid * grid) as f64).round() as usize).clamp(1, grid * grid),
        });
        Ok(Some(Masker { captions, patches, seed: config.seed }))
    }

    /// The masker of rank `rank` of a data-parallel world, whose batch holds other pairs than
    /// the other ranks': its own draws, as each rank of PyTorch's DDP masks with its own
    /// generator. Rank 0 draws what one process draws.
    pub fn for_rank(self, rank: usize) -> Masker {
        Masker { seed: self.seed ^ (rank as u64).wrapping_mul(RANK_STREAM), ..self }
    }

    /// The masks of step `step` for its batch of `tokens` (rows of the model's context).
    pub fn draw(&self, tokens: &[u32], batch: usize, step: u64) -> MaskDraw {
        let mut rng = Rng::new(self.seed ^ MASK_STREAM ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        MaskDraw {
            captions: self.captions.as_ref().map(|c| c.draw(tokens, &mut rng)),
            patches: self.patches.as_ref().map(|p| p.draw(batch, &mut rng)),
        }
    }
}

impl CaptionMasking {
    fn draw(&self, tokens: &[u32], rng: &mut Rng) -> CaptionMasks {
        let mut rows = Vec::with_capacity(self.copies * tokens.len());
        let mut targets = Vec::with_capacity(self.copies * tokens.len());
        for _ in 0..self.copies {
            for row in tokens.chunks(self.context) {
                let (masked, target) = self.mask_row(row, rng);
                rows.extend(masked);
                targets.extend(target);
            }
        }
        CaptionMasks { rows, targets, copies: self.copies }
    }

    /// One masked copy of a caption row and its targets.
    fn mask_row(&self, row: &[u32], rng: &mut Rng) -> (Vec<u32>, Vec<u32>) {
        let words = self.words(row);
        let tokens: usize = words.iter().map(|w| w.len()).sum();
        let budget = ((self.ratio * tokens as f64).round() as usize).max(1);
        let mut order: Vec<usize> = (0..words.len()).collect();
        rng.shuffle(&mut order);
        let (mut masked, mut target) = (row.to_vec(), vec![IGNORE_TARGET; row.len()]);
        let mut taken = 0;
        for word in order.into_iter().map(|w| &words[w]) {
            if taken + word.len() > budget {
                continue;
            }
            taken += word.len();
            for position in word.clone() {
                target[position] = row[position];
                let draw = rng.uniform();
                if draw < TO_MASK {
                    masked[position] = self.mask_id;
                } else if draw < TO_MASK + TO_RANDOM {
                    // Any word token: the special ids are the two largest.
                    masked[position] = rng.below(self.sot.min(self.eot) as usize) as u32;
                }
            }
        }
        (masked, target)
    }

    /// The positions of each word of a caption row: the tokens between its SOT and its EOT (or
    /// the row's end), split after each token that ends a word.
    fn words(&self, row: &[u32]) -> Vec<std::ops::Range<usize>> {
        let end = row.iter().position(|&id| id == self.eot).unwrap_or(row.len());
        let mut words = Vec::new();
        let mut start = 1;
        for (position, &id) in row.iter().enumerate().take(end).skip(1) {
            if id == self.sot {
                start = position + 1;
                continue;
            }
            if self.word_ends.get(id as usize).copied().unwrap_or(true) || position + 1 == end {
                words.push(start..position + 1);
                start = position + 1;
            }
        }
        words
    }
}

impl PatchMasking {
    fn draw(&self, batch: usize, rng: &mut Rng) -> PatchMasks {
        let mut patches = Vec::with_capacity(batch * self.per_image);
        for _ in 0..batch {
            let mut all: Vec<u32> = (0..self.patches_per_image as u32).collect();
            // A partial Fisher-Yates shuffle: the first `per_image` are a uniform draw.
            for i in 0..self.per_image {
                let j = i + rng.below(all.len() - i);
                all.swap(i, j);
            }
            patches.extend_from_slice(&all[..self.per_image]);
        }
        PatchMasks { patches, per_image: self.per_image }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Truncation;

    fn setup() -> (TrainConfig, ModelConfig, Tokenizer) {
        let mut config = TrainConfig::tiny_default();
        config.preset = "tiny-oner".into();
        config.objectives = crate::model::Objectives::parse("itc,xmc,mlm,mim").unwrap();
        let corpus = crate::data::shapes::caption_corpus(&config.data, 200);
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), 600).unwrap();
        (config.clone(), config.model_config().unwrap(), tokenizer)
    }

    #[test]
    fn whole_words_are_masked_within_the_ratio_and_the_specials_never() {
        let (config, model, tokenizer) = setup();
        let masker = Masker::new(&config, &model, &tokenizer).unwrap().unwrap();
        let texts = ["a large red circle at the top left", "two small blue squares", "a green triangle"];
        let context = model.text.context;
        let tokens = tokenizer.tokenize_batch(&texts, context, Truncation::Reference).unwrap();
        let draw = masker.draw(&tokens, texts.len(), 3);
        let c = draw.captions.as_ref().unwrap();
        assert_eq!((c.copies, c.rows.len()), (2, 2 * tokens.len()));
        let ends = tokenizer.word_ends();
        let mask_id = model.text.vocab as u32;
        for (copy, (rows, targets)) in c.rows.chunks(tokens.len()).zip(c.targets.chunks(tokens.len())).enumerate() {
            for (b, row) in tokens.chunks(context).enumerate() {
                let (masked, target) = (&rows[b * context..][..context], &targets[b * context..][..context]);
                let eot = row.iter().position(|&id| id == tokenizer.eot()).unwrap();
                let predicted: Vec<usize> = (0..context).filter(|&i| target[i] != IGNORE_TARGET).collect();
                // Within the budget, at least one, never SOT, EOT or padding.
                let budget = ((0.15 * (eot - 1) as f64).round() as usize).max(1);
                assert!(!predicted.is_empty() && predicted.len() <= budget, "copy {copy} row {b}: {predicted:?}");
                assert!(predicted.iter().all(|&i| i > 0 && i < eot));
                // Whole words: a predicted token's word neighbours are predicted too.
                for &i in &predicted {
                    assert_eq!(target[i], row[i]);
                    if i + 1 < eot && !ends[row[i] as usize] {
                        assert!(predicted.contains(&(i + 1)), "a word cut after token {i} of {row:?}");
                    }
                    assert!(masked[i] == mask_id || masked[i] < tokenizer.sot().min(tokenizer.eot()));
                }
                for i in (0..context).filter(|i| !predicted.contains(i)) {
                    assert_eq!(masked[i], row[i]);
                }
            }
        }
        // A function of the step: the same step draws the same, another step another.
        assert_eq!(masker.draw(&tokens, texts.len(), 3), draw);
        assert_ne!(masker.draw(&tokens, texts.len(), 4), draw);
        // Ranks of a data-parallel world draw their own; rank 0 what one process draws.
        let rank = |r| Masker::new(&config, &model, &tokenizer).unwrap().unwrap().for_rank(r);
        assert_eq!(rank(0).draw(&tokens, texts.len(), 3), draw);
        assert_ne!(rank(1).draw(&tokens, texts.len(), 3), draw);
        assert_ne!(rank(2).draw(&tokens, texts.len(), 3), rank(1).draw(&tokens, texts.len(), 3));
        let p = draw.patches.unwrap();
        let grid = model.vision.grid();
        assert_eq!(p.per_image, ((0.4 * (grid * grid) as f64).round() as usize).max(1));
        for image in p.patches.chunks(p.per_image) {
            let mut sorted = image.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), p.per_image, "{image:?}");
        }
    }

    #[test]
    fn no_masked_objective_draws_nothing() {
        let (mut config, model, tokenizer) = setup();
        config.objectives = crate::model::Objectives::parse("itc,xmc").unwrap();
        assert!(Masker::new(&config, &model, &tokenizer).unwrap().is_none());
    }
}
