//! Images to model inputs: the one place pixels are normalised and laid out as the towers take
//! them, shared by training, evaluation and anything else that feeds images to a model (the
//! evaluator must not depend on the trainer for it).

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::{DType, Tensor};

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
