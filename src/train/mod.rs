//! Training: the loop, its schedule and parameter groups, checkpoints, logs and plots.

mod batch;
pub mod checkpoint;
mod config;
mod log;
mod param_groups;
mod plot;
mod run;
mod run_dir;
mod schedule;

pub use batch::{Batch, CLIP_MEAN, CLIP_STD, images_to_tensor, make_batch};
pub use config::{Precision, TokenizerSource, TrainConfig};
pub use log::read_jsonl;
pub use run::{Resume, RunOptions, RunSummary, train};
pub use run_dir::{load_run_tokenizer, read_run_config};
pub use schedule::CosineSchedule;
