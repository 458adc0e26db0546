//! The order a training run visits a prepared dataset in: every epoch a permutation of the
//! samples drawn from (seed, epoch), cut into batches in order, the last partial batch dropped.
//! The samples of step `k` are therefore a pure function of (seed, k): a resumed run, a
//! prefetch thread or a test asks for any step without replaying the ones before it.
//!
//! Dropping the last partial batch (open_clip's loaders do too, `drop_last=True`) keeps every
//! batch the same size and free of duplicates: a batch wrapped across the end of an epoch could
//! hold the same pair twice, one copy then a false negative of the other. Each epoch's
//! permutation is new, so the `samples % batch` pairs left out differ from epoch to epoch.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::Rng;

/// Salt of the shuffling stream, so it shares nothing with the streams the same seed drives
/// elsewhere (weight init, masks).
const SHUFFLE_STREAM: u64 = 0x7368_7566_666c_6521;

pub struct EpochOrder {
    samples: usize,
    batch_size: usize,
    seed: u64,
    /// The permutation made last: consecutive steps share their epoch, and making one costs
    /// a pass over the whole dataset.
    last: Mutex<Option<(u64, Arc<Vec<u32>>)>>,
}

impl EpochOrder {
    /// The order of `samples` samples in batches of `batch_size`; at least one whole batch.
    pub fn new(samples: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 || samples < batch_size {
            return Err(Error::config(format!(
                "the dataset holds {samples} samples, fewer than one batch of {batch_size}: use a smaller --batch-size"
            )));
        }
        if u32::try_from(samples).is_err() {
            return Err(Error::config(format!("{samples} samples: at most {} are supported", u32::MAX)));
        }
        Ok(EpochOrder { samples, batch_size, seed, last: Mutex::new(None) })
    }

    /// Whole batches in one pass over the data.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.samples / self.batch_size) as u64
    }

    /// Samples each epoch leaves out: the end of its order, too few for a batch.
    pub fn left_out_per_epoch(&self) -> usize {
        self.samples % self.batch_size
    }

    /// The 0-based epoch that step `step` belongs to.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.batches_per_epoch()
    }

    /// Epoch `epoch`'s order of the sample indices, shuffled by a stream of its own.
    pub fn permutation(&self, epoch: u64) -> Arc<Vec<u32>> {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, order)) = last.as_ref().filter(|(made, _)| *made == epoch) {
            return Arc::clone(order);
        }
        let key = Rng::new(self.seed ^ SHUFFLE_STREAM).next_u64();
        let mut rng = Rng::new(key ^ epoch);
        let mut order: Vec<u32> = (0..self.samples as u32).collect();
        rng.shuffle(&mut order);
        let order = Arc::new(order);
        *last = Some((epoch, Arc::clone(&order)));
        order
    }

    /// The sample indices of 0-based step `step`, in batch order.
    pub fn batch(&self, step: u64) -> Vec<usize> {
        let order = self.permutation(self.epoch_of(step));
        let start = (step % self.batches_per_epoch()) as usize * self.batch_size;
        order[start..start + self.batch_size].iter().map(|&i| i as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_is_a_new_permutation_of_every_sample() {
        let order = EpochOrder::new(23, 5, 7).unwrap();
        let mut previous: Option<Vec<u32>> = None;
        for epoch in 0..4 {
            let perm = order.permutation(epoch).to_vec();
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..23).collect::<Vec<u32>>(), "epoch {epoch}");
            assert_ne!(Some(&perm), previous.as_ref(), "epoch {epoch} repeats the one before");
            previous = Some(perm);
        }
        // Another seed, another order.
        assert_ne!(EpochOrder::new(23, 5, 8).unwrap().permutation(0), order.permutation(0));
    }

    #[test]
    fn an_epochs_batches_are_disjoint_whole_and_drop_the_remainder() {
        let order = EpochOrder::new(23, 5, 7).unwrap();
        assert_eq!((order.batches_per_epoch(), order.left_out_per_epoch()), (4, 3));
        for epoch in 0..3u64 {
            let mut seen: Vec<usize> = (epoch * 4..epoch * 4 + 4).flat_map(|k| order.batch(k)).collect();
            assert!(seen.iter().all(|&i| i < 23));
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 20, "epoch {epoch}: 4 batches of 5 distinct samples");
            // The batches are the permutation's first 20 entries, in order.
            let perm = order.permutation(epoch);
            let first: Vec<usize> = perm[..5].iter().map(|&i| i as usize).collect();
            assert_eq!(order.batch(epoch * 4), first);
        }
        assert_eq!((order.epoch_of(3), order.epoch_of(4), order.epoch_of(9)), (0, 1, 2));
    }

    #[test]
    fn a_steps_batch_does_not_depend_on_the_steps_asked_before() {
        let walked = EpochOrder::new(50, 8, 3).unwrap();
        let path: Vec<Vec<usize>> = (0..20).map(|k| walked.batch(k)).collect();
        // Fresh orders asked out of order, across epoch boundaries, as a resume or a
        // prefetch thread would.
        for k in [13u64, 0, 19, 6, 5, 12] {
            assert_eq!(EpochOrder::new(50, 8, 3).unwrap().batch(k), path[k as usize], "step {k}");
            assert_eq!(walked.batch(k), path[k as usize], "step {k} asked again");
        }
    }

    #[test]
    fn a_dataset_smaller_than_a_batch_is_refused() {
        let err = EpochOrder::new(3, 4, 0).err().unwrap().to_string();
        assert!(err.contains("3 samples") && err.contains("batch of 4"), "{err}");
        assert!(EpochOrder::new(0, 2, 0).is_err());
    }
}
