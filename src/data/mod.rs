//! Training and evaluation data. Today: [`shapes`], the procedural image-caption world that
//! needs no files, so a run, a test or a benchmark always has data with known ground truth.

pub mod shapes;
