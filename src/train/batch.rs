//! Turning generated samples into model inputs: normalised NCHW pixels and token rows.
//! Batch `k` of a run is always samples `k*B..(k+1)*B` of the training split, so the data
//! of any step is a pure function of the step: resuming needs no loader state.

use rayon::prelude::*;

use super::config::TrainConfig;
use super::step::MASTER_DTYPE;
use crate::data::shapes::{self, ShapesConfig, Split};
use crate::error::Result;
use crate::tensor::{DType, Device, Tensor};
use crate::text::{Tokenizer, Truncation};

/// open_clip's (OpenAI CLIP's) per-channel pixel statistics.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// HWC RGB u8 images of side `size` to a normalised [n, 3, size, size] tensor.
pub fn images_to_tensor(images: &[&[u8]], size: usize, dtype: DType) -> Result<Tensor> {
    let plane = size * size;
    let mut data = vec![0.0f64; images.len() * 3 * plane];
    data.par_chunks_mut(3 * plane).zip(images.par_iter()).for_each(|(dst, img)| {
        for (pixel, rgb) in img.chunks_exact(3).enumerate() {
            for c in 0..3 {
                dst[c * plane + pixel] = (rgb[c] as f64 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    });
    Tensor::from_f64(&data, [images.len(), 3, size, size], dtype)
}

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

/// The batch of 0-based training step `step`: samples `step * B..(step + 1) * B` of the
/// training split.
pub fn training_batch(config: &TrainConfig, tokenizer: &Tokenizer, context: usize, step: u64) -> Result<Batch> {
    let start = step * config.batch_size as u64;
    make_batch(&config.data, Split::Train, start, config.batch_size, tokenizer, context, MASTER_DTYPE)
}

/// Samples `start..start + n` of `split`, rendered, normalised and tokenised.
pub fn make_batch(
    data: &ShapesConfig,
    split: Split,
    start: u64,
    n: usize,
    tokenizer: &Tokenizer,
    context: usize,
    dtype: DType,
) -> Result<Batch> {
    let samples = shapes::samples(data, split, start..start + n as u64);
    let images: Vec<&[u8]> = samples.iter().map(|s| s.image.as_slice()).collect();
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    Ok(Batch {
        images: images_to_tensor(&images, data.image_size, dtype)?,
        tokens: tokenizer.tokenize_batch(&texts, context, Truncation::Reference)?,
        captions,
    })
}
