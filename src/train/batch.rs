//! Turning samples into model inputs: normalised NCHW pixels and token rows, from the shapes
//! world or a prepared dataset (which samples a step takes is train/data.rs's business).

use super::config::TrainConfig;
use super::step::MASTER_DTYPE;
use crate::data::images_to_tensor;
use crate::data::shapes::{self, ShapesConfig, Split};
use crate::data::shards::PreparedDataset;
use crate::error::Result;
use crate::model::ModelConfig;
use crate::tensor::{DType, Device, Rng, Tensor};
use crate::text::Tokenizer;

/// A batch ready for the model.
pub struct Batch {
    pub images: Tensor,
    /// Row-major [n, context].
    pub tokens: Vec<u32>,
    pub captions: Vec<String>,
}

impl Batch {
    /// The images on `device` in `dtype`, as a training step takes them.
    pub fn images_on(&self, device: Device, dtype: DType) -> Result<Tensor> {
        self.images.to_device(device)?.to_dtype(dtype)
    }
}

/// Samples `start..start + n` of `split`, rendered, normalised and tokenised as `model` takes
/// them (its pixel statistics, context and truncation).
pub fn make_batch(
    data: &ShapesConfig,
    split: Split,
    start: u64,
    n: usize,
    tokenizer: &Tokenizer,
    model: &ModelConfig,
    dtype: DType,
) -> Result<Batch> {
    let samples = shapes::samples(data, split, start..start + n as u64);
    let images: Vec<&[u8]> = samples.iter().map(|s| s.image.as_slice()).collect();
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    model_inputs(&images, data.image_size, captions, tokenizer, model, dtype)
}

/// Samples `indices` of a prepared dataset, normalised and tokenised as `model` takes them. The
/// captions are tokenised again from their text: the ids stored beside them are whatever
/// tokenizer `prepare` ran, not necessarily the run's.
pub fn prepared_batch(
    dataset: &PreparedDataset,
    indices: &[usize],
    tokenizer: &Tokenizer,
    model: &ModelConfig,
    dtype: DType,
) -> Result<Batch> {
    let images: Vec<&[u8]> = indices.iter().map(|&i| dataset.pixels(i)).collect();
    let captions: Vec<String> = indices.iter().map(|&i| dataset.caption(i).caption.clone()).collect();
    model_inputs(&images, dataset.index.resolution, captions, tokenizer, model, dtype)
}

/// HWC RGB images of side `size` and their captions as the model reads them.
fn model_inputs(
    images: &[&[u8]],
    size: usize,
    captions: Vec<String>,
    tokenizer: &Tokenizer,
    model: &ModelConfig,
    dtype: DType,
) -> Result<Batch> {
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    Ok(Batch {
        images: images_to_tensor(images, size, model.pixel_stats, dtype)?,
        tokens: tokenizer.tokenize_batch(&texts, model.text.context, model.text.truncation)?,
        captions,
    })
}

/// Caption lengths (SOT to EOT, both counted) of a synthetic batch: about what the shapes
/// world's captions take, so packed text costs what it does in training; the same range as
/// benches/pytorch_reference.py's CAPTION_TOKENS, so both sides time the same text.
const SYNTHETIC_CAPTION_TOKENS: std::ops::RangeInclusive<usize> = 6..=24;

/// How long the captions of a synthetic batch are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticCaptions {
    /// Lengths drawn from [`SYNTHETIC_CAPTION_TOKENS`].
    ShapesLike,
    /// Every caption fills the context: the text work of a tower that runs every position, as
    /// open_clip's does at its 77 tokens, so the two are compared on equal work.
    FullContext,
}

/// A batch of random data in the shapes of a real one (`--data synthetic`, for throughput
/// runs that should not time the host's rendering): N(0, 1) images, which is what normalised
/// pixels look like to the model, and caption rows of SOT, random word ids and EOT, of the
/// lengths `captions` says (cut to the context), zero-padded.
pub fn synthetic_batch(
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    context: usize,
    captions: SyntheticCaptions,
    seed: u64,
) -> Result<Batch> {
    let mut rng = Rng::new(seed);
    let (n, size) = (config.batch_size, config.data.image_size);
    let images = rng.normal_tensor(vec![n, 3, size, size], 1.0, MASTER_DTYPE);
    let (sot, eot) = (tokenizer.sot(), tokenizer.eot());
    let words = sot.min(eot) as usize;
    let (lo, hi) = match captions {
        SyntheticCaptions::ShapesLike => (*SYNTHETIC_CAPTION_TOKENS.start(), *SYNTHETIC_CAPTION_TOKENS.end()),
        SyntheticCaptions::FullContext => (context, context),
    };
    let mut tokens = vec![0u32; n * context];
    for row in tokens.chunks_mut(context) {
        let len = (lo + rng.below(hi - lo + 1)).min(context);
        row[0] = sot;
        for id in &mut row[1..len - 1] {
            *id = 1 + rng.below(words - 1) as u32;
        }
        row[len - 1] = eot;
    }
    Ok(Batch { images, tokens, captions: vec![String::new(); n] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::eot_positions;

    #[test]
    fn a_synthetic_batch_has_the_shapes_of_a_real_one() {
        let mut config = TrainConfig::tiny_default();
        config.batch_size = 64;
        let tokenizer = Tokenizer::train_bpe(["a red circle", "two blue squares"], 600).unwrap();
        let context = 16;
        let batch = synthetic_batch(&config, &tokenizer, context, SyntheticCaptions::ShapesLike, 5).unwrap();
        let size = config.data.image_size;
        assert_eq!(batch.images.dims(), [64, 3, size, size]);
        let ends = eot_positions(&batch.tokens, context).unwrap();
        for (row, &end) in batch.tokens.chunks(context).zip(&ends) {
            assert_eq!(row[0], tokenizer.sot());
            assert_eq!(row[end], tokenizer.eot(), "{row:?}");
            assert!((5..context).contains(&end), "caption of {} tokens in {row:?}", end + 1);
            assert!(row[1..end].iter().all(|&id| id > 0 && id < tokenizer.sot().min(tokenizer.eot())));
            assert!(row[end + 1..].iter().all(|&id| id == 0));
        }
        // Lengths vary (packed text is not one shape), and the same seed makes the same batch.
        assert!(ends.iter().any(|&e| e != ends[0]));
        let again = synthetic_batch(&config, &tokenizer, context, SyntheticCaptions::ShapesLike, 5).unwrap();
        assert_eq!(again.tokens, batch.tokens);
        // Full context: every caption ends at the last position.
        let full = synthetic_batch(&config, &tokenizer, context, SyntheticCaptions::FullContext, 5).unwrap();
        assert_eq!(eot_positions(&full.tokens, context).unwrap(), vec![context - 1; 64]);
    }
}
