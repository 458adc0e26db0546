//! Training and evaluation data: [`shapes`], the procedural image-caption world that needs no
//! files, so a run, a test or a benchmark always has data with known ground truth; real
//! image-caption pairs from CSV/TSV listings and webdataset tars ([`sources`]), decoded and
//! cropped as the reference evaluation does ([`decode`]) and packed by `msclip prepare`
//! ([`prepare`]) into memory-mapped shards ([`shards`]), which training visits in a seeded
//! order ([`epochs`]); and [`pixels`], images to the tensors the towers take.

pub mod decode;
pub mod epochs;
pub mod pixels;
pub mod prepare;
pub mod resample;
pub mod shapes;
pub mod shards;
pub mod sources;

pub use pixels::{CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, PixelStats, images_to_tensor};
