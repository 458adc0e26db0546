//! Images to model inputs: the one place pixels are normalised and laid out as the towers take
//! them, shared by training, evaluation and anything else that feeds images to a model (the
//! evaluator must not depend on the trainer for it).

use half::bf16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::tensor::{CpuStorage, DType, Storage, Tensor};

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
///
/// A channel byte has only 256 normalised values, so they are computed once, in f64 and
/// rounded once to `dtype`, and a batch is a gather from the table: the same bits as
/// normalising every pixel, several times faster at 224 px (benches/prepared_loader.rs).
pub fn images_to_tensor(images: &[&[u8]], size: usize, stats: PixelStats, dtype: DType) -> Result<Tensor> {
    let shape = [images.len(), 3, size, size];
    match dtype {
        DType::F32 => Tensor::from_vec(planar(images, size, &table(stats, |v| v as f32)), shape),
        DType::F64 => Tensor::from_vec(planar(images, size, &table(stats, |v| v)), shape),
        DType::BF16 => {
            let data = planar(images, size, &table(stats, bf16::from_f64));
            Tensor::from_storage(Storage::Cpu(CpuStorage::BF16(data)), shape)
        }
    }
}

/// Per channel, the normalised value of each byte, rounded by `round`.
fn table<T>(stats: PixelStats, round: impl Fn(f64) -> T) -> [Vec<T>; 3] {
    let (mean, std) = stats.mean_std();
    std::array::from_fn(|c| (0..=255u8).map(|v| round((v as f64 / 255.0 - mean[c]) / std[c])).collect())
}

/// The images' channels as planes (CHW), each byte looked up in its channel's table.
fn planar<T: Copy + Default + Send + Sync>(images: &[&[u8]], size: usize, table: &[Vec<T>; 3]) -> Vec<T> {
    let plane = size * size;
    let mut data = vec![T::default(); images.len() * 3 * plane];
    data.par_chunks_mut(3 * plane).zip(images.par_iter()).for_each(|(dst, img)| {
        let (red, rest) = dst.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        for (pixel, rgb) in img.chunks_exact(3).enumerate() {
            red[pixel] = table[0][rgb[0] as usize];
            green[pixel] = table[1][rgb[1] as usize];
            blue[pixel] = table[2][rgb[2] as usize];
        }
    });
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    #[test]
    fn the_tables_give_the_values_of_normalising_every_pixel() {
        let (n, size, mut rng) = (3, 5, Rng::new(3));
        let bytes: Vec<Vec<u8>> =
            (0..n).map(|_| (0..size * size * 3).map(|_| rng.below(256) as u8).collect()).collect();
        let images: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        for stats in [PixelStats::Clip, PixelStats::ImageNet] {
            let (mean, std) = stats.mean_std();
            let mut want = vec![0.0; n * 3 * size * size];
            for (i, image) in images.iter().enumerate() {
                for (pixel, rgb) in image.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        want[(i * 3 + c) * size * size + pixel] = (rgb[c] as f64 / 255.0 - mean[c]) / std[c];
                    }
                }
            }
            for dtype in [DType::F32, DType::F64, DType::BF16] {
                let got = images_to_tensor(&images, size, stats, dtype).unwrap();
                let rounded = Tensor::from_f64(&want, [n, 3, size, size], dtype).unwrap();
                assert_eq!((got.dims(), got.dtype()), (rounded.dims(), dtype));
                assert_eq!(got.to_f64_vec(), rounded.to_f64_vec(), "{stats:?} {dtype:?}");
            }
        }
    }
}
