//! The training loop's batches, each rendered on a background thread while the step before it
//! runs, on GPU devices: there a step only queues work, and the host's rendering of the shapes
//! world (about 1.6 ms a pair at 224 px on a 2-core host, docs/benchmarks.md) would otherwise
//! sit between the device's steps. On the CPU the step needs every core, so batches are made
//! in line there.
//!
//! Batch `k` is a pure function of `k` (train/batch.rs), so a prefetched batch is the batch
//! the step would have made itself, and a resumed run needs no loader state.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::batch::{Batch, training_batch};
use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::text::Tokenizer;

pub struct Batches {
    config: Arc<TrainConfig>,
    tokenizer: Arc<Tokenizer>,
    context: usize,
    /// Whether the next step's batch is made in the background.
    ahead: bool,
    /// The step whose batch is being made, and the thread making it.
    next: Option<(u64, JoinHandle<Result<Batch>>)>,
}

impl Batches {
    /// Batches of `config`'s training data, tokenised to `context`; made ahead on GPU devices.
    pub fn new(config: &TrainConfig, tokenizer: &Tokenizer, context: usize) -> Self {
        let ahead = config.device.is_gpu();
        Batches { config: Arc::new(config.clone()), tokenizer: Arc::new(tokenizer.clone()), context, ahead, next: None }
    }

    /// The batch of 0-based step `step`; when made ahead, starts on the batch of `step + 1`
    /// (unless `step` is the run's last).
    pub fn get(&mut self, step: u64) -> Result<Batch> {
        let batch = match self.next.take() {
            Some((made, thread)) if made == step => {
                thread.join().map_err(|_| Error::invalid("training data", "the thread making a batch panicked"))??
            }
            // Nothing ahead yet (the first step, or the loop moved on another way): make it here.
            _ => training_batch(&self.config, &self.tokenizer, self.context, step)?,
        };
        if self.ahead && step + 1 < self.config.steps {
            let (config, tokenizer, context) = (Arc::clone(&self.config), Arc::clone(&self.tokenizer), self.context);
            let next = step + 1;
            self.next = Some((next, std::thread::spawn(move || training_batch(&config, &tokenizer, context, next))));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

    #[test]
    fn batches_made_ahead_are_the_batches_made_in_line() {
        let mut config = TrainConfig::tiny_default();
        config.batch_size = 4;
        let corpus = crate::data::shapes::caption_corpus(&config.data, 200);
        let tokenizer = Tokenizer::train_bpe(corpus.iter().map(String::as_str), 600).unwrap();
        let mut gpu = config.clone();
        gpu.device = Device::Emu;
        let (mut inline, mut ahead) = (Batches::new(&config, &tokenizer, 16), Batches::new(&gpu, &tokenizer, 16));
        assert!(!inline.ahead && ahead.ahead);
        // In order, then a jump (a resumed run starts anywhere).
        for step in [0, 1, 2, 7, 8] {
            let (want, got) = (inline.get(step).unwrap(), ahead.get(step).unwrap());
            assert_eq!(got.tokens, want.tokens, "step {step}");
            assert_eq!(got.images.to_f64_vec(), want.images.to_f64_vec(), "step {step}");
        }
        assert_eq!(ahead.next.as_ref().map(|(step, _)| *step), Some(9));
        // Nothing is made past the run's last step.
        let last = gpu.steps - 1;
        ahead.get(last).unwrap();
        assert!(ahead.next.is_none());
    }
}
