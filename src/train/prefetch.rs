//! The training loop's batches, made ahead on background threads while the steps before them
//! run. On GPU devices a step only queues work, and the host's rendering of the shapes world
//! (about 1.6 ms a pair at 224 px on a 2-core host, docs/benchmarks.md) would otherwise sit
//! between the device's steps. A prepared dataset's batch is made ahead on every device: it is
//! reads of memory-mapped shards, whose cold pages wait on the disk rather than on a core, and
//! a little normalising and tokenising (benches/prepared_loader.rs), so it overlaps a CPU step
//! at a small cost. Shapes-world batches on the CPU are made in line: rendering needs the cores
//! the step is using.
//!
//! Batch `k` is a pure function of `k` (train/data.rs), so a prefetched batch is the batch
//! the step would have made itself, and a resumed run needs no loader state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::batch::Batch;
use super::data::TrainingData;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tensor::Device;
use crate::text::Tokenizer;

/// Batches made ahead at most: two ride out one slow batch (cold pages of the shards, a busy
/// host) without holding many batches of pixels.
const AHEAD: usize = 2;

pub struct Batches {
    data: Arc<TrainingData>,
    tokenizer: Arc<Tokenizer>,
    model: Arc<ModelConfig>,
    /// The run's steps: nothing is made past the last.
    steps: u64,
    /// How many batches are made ahead (0: each in line).
    ahead: usize,
    /// The steps whose batches are being made, in order, and the threads making them.
    pending: VecDeque<(u64, JoinHandle<Result<Batch>>)>,
}

impl Batches {
    /// The batches of `steps` steps of `data`, as `model` reads them, for a run on `device`.
    pub fn new(data: TrainingData, tokenizer: &Tokenizer, model: &ModelConfig, steps: u64, device: Device) -> Self {
        let ahead = if device.is_gpu() || data.is_prepared() { AHEAD } else { 0 };
        Batches {
            data: Arc::new(data),
            tokenizer: Arc::new(tokenizer.clone()),
            model: Arc::new(model.clone()),
            steps,
            ahead,
            pending: VecDeque::new(),
        }
    }

    /// The batch of 0-based step `step`; then the next steps' batches are started, up to
    /// [`AHEAD`] of them, when they are made ahead.
    pub fn get(&mut self, step: u64) -> Result<Batch> {
        let batch = match self.pending.pop_front() {
            Some((made, thread)) if made == step => {
                thread.join().map_err(|_| Error::invalid("training data", "the thread making a batch panicked"))??
            }
            // Nothing ahead for this step (the first, or the loop moved on another way): what
            // was started is for other steps.
            _ => {
                self.pending.clear();
                self.data.batch(step, &self.tokenizer, &self.model)?
            }
        };
        let mut next = self.pending.back().map_or(step + 1, |(last, _)| last + 1);
        while self.pending.len() < self.ahead && next < self.steps {
            let (data, tokenizer, model) =
                (Arc::clone(&self.data), Arc::clone(&self.tokenizer), Arc::clone(&self.model));
            let k = next;
            self.pending.push_back((k, std::thread::spawn(move || data.batch(k, &tokenizer, &model))));
            next += 1;
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::TrainConfig;

    #[test]
    fn batches_made_ahead_are_the_batches_made_in_line() {
        let mut config = TrainConfig::tiny_default();
        config.batch_size = 4;
        let model = config.model_config().unwrap();
        let corpus = crate::data::shapes::caption_corpus(&config.data, 200);
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), 600).unwrap();
        let open = || TrainingData::open(&config, &model).unwrap();
        let mut inline = Batches::new(open(), &tokenizer, &model, config.steps, Device::Cpu);
        let mut ahead = Batches::new(open(), &tokenizer, &model, config.steps, Device::Emu);
        assert_eq!((inline.ahead, ahead.ahead), (0, AHEAD));
        // In order, then a jump (a resumed run starts anywhere).
        for step in [0, 1, 2, 7, 8] {
            let (want, got) = (inline.get(step).unwrap(), ahead.get(step).unwrap());
            assert_eq!(got.tokens, want.tokens, "step {step}");
            assert_eq!(got.images.to_f64_vec(), want.images.to_f64_vec(), "step {step}");
        }
        let started: Vec<u64> = ahead.pending.iter().map(|(step, _)| *step).collect();
        assert_eq!(started, [9, 10]);
        // Nothing is made past the run's last step.
        ahead.get(config.steps - 1).unwrap();
        assert!(ahead.pending.is_empty());
    }
}
