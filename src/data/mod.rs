//! Training and evaluation data. Today: [`shapes`], the procedural image-caption world that
//! needs no files, so a run, a test or a benchmark always has data with known ground truth;
//! and [`pixels`], images to the tensors the towers take.

pub mod pixels;
pub mod shapes;

pub use pixels::{CLIP_MEAN, CLIP_STD, images_to_tensor};
