//! Training: the loop, its schedule and parameter groups, checkpoints, logs and plots.

pub mod ablation;
mod batch;
pub mod checkpoint;
mod checkpoint_dir;
mod config;
mod data;
mod data_parallel;
mod evaluation;
mod graph_step;
mod log;
mod masking;
pub mod memory;
pub mod momentum;
mod param_groups;
mod plot;
mod prefetch;
mod readback;
mod recipe;
mod resume;
mod run;
mod run_dir;
mod schedule;
mod step;

pub use batch::{Batch, SyntheticCaptions, make_batch};
pub use config::{Precision, TokenizerSource, TrainConfig, validate_run_name};
pub use data::{PreparedData, TrainingData};
pub use graph_step::{GraphStep, StepIssuer};
pub use log::{append_jsonl, read_jsonl};
pub use masking::Masker;
pub use resume::changes as resume_changes;
pub use run::{Resume, RunEnd, RunOptions, RunSummary, new_run_tokenizer, train};
pub use run_dir::{load_run_tokenizer, read_run_config, run_dir_of_checkpoint};
pub use schedule::CosineSchedule;
pub use step::{MASTER_DTYPE, StepInput, StepOutput, StepState, Steps};
