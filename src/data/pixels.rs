//! Images to model inputs: the one place pixels are normalised and laid out as the towers take
//! them, shared by training, evaluation and anything else that feeds images to a model (the
//! evaluator must not depend on the trainer for it).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// open_clip's (OpenAI CLIP's) per-channel pixel statistics.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// ImageNet's per-channel statistics (torchvision's), which MS-CLIP's zero-shot evaluation
/// normalises with.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Which statistics a model's images are normalised with: part of the preset, since weights
/// trained with one set are wrong with the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelStats {
    /// OpenAI CLIP's and open_clip's (configs from before the choice).
    #[default]
    Clip,
    /// ImageNet's, as MS-CLIP's released code evaluates.
    #[serde(rename = "imagenet")]
    ImageNet,
}

impl PixelStats {
    /// (mean, std) per channel.
    pub fn mean_std(self) -> ([f64; 3], [f64; 3]) {
        match self {
            PixelStats::Clip => (CLIP_MEAN, CLIP_STD),
            PixelStats::ImageNet => (IMAGENET_MEAN, IMAGENET_STD),
        }
    }
}

/// HWC RGB u8 images of side `size` to a [n, 3, size, size] tensor normalised with `stats`.
pub fn images_to_tensor(images: &[&[u8]], size: usize, stats: PixelStats, dtype: DType) -> Result<Tensor> {
    let (mean, std) = stats.mean_std();
    let plane = size * size;
    let mut data = vec![0.0f64; images.len() * 3 * plane];
    data.par_chunks_mut(3 * plane).zip(images.par_iter()).for_each(|(dst, img)| {
        for (pixel, rgb) in img.chunks_exact(3).enumerate() {
            for c in 0..3 {
                dst[c * plane + pixel] = (rgb[c] as f64 / 255.0 - mean[c]) / std[c];
            }
        }
    });
    Tensor::from_f64(&data, [images.len(), 3, size, size], dtype)
}
