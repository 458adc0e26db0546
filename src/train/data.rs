//! What a run trains on, opened once per run: the shapes world (the default) or a dataset written
//! by `msclip prepare` (`msclip train --data DIR`). For either, the batch of step `k` is a pure
//! function of the config and `k` (for prepared data through [`EpochOrder`]), so a batch made
//! ahead is the batch the step would have made, and a resumed run needs no loader state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::batch::{Batch, make_batch, prepared_batch};
use super::config::TrainConfig;
use super::step::MASTER_DTYPE;
use crate::data::epochs::EpochOrder;
use crate::data::shapes::{self, ShapesConfig, Split};
use crate::data::shards::{Index, PreparedDataset};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::text::Tokenizer;

/// Shapes-world captions a run's BPE is trained on (every word the evaluation uses is added).
const SHAPES_BPE_CORPUS: usize = 20_000;
/// Captions of a prepared dataset a run's BPE is trained on at most, evenly spaced over it.
const PREPARED_BPE_CORPUS: usize = 100_000;

/// A prepared dataset as a run's config.json records it: where it is and what it held when the
/// run began, so that a resumed run notices a folder that was prepared again under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedData {
    /// Absolute, so a run resumed from another working directory finds it.
    pub dir: PathBuf,
    pub samples: usize,
    pub resolution: usize,
    /// What `prepare` read (index.json's `source`).
    pub source: String,
}

impl PreparedData {
    /// The prepared dataset in `dir`, described from its index.
    pub fn read(dir: &Path) -> Result<Self> {
        let dir = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
        let index = Index::read(&dir)?;
        Ok(PreparedData::of(dir, &index))
    }

    fn of(dir: PathBuf, index: &Index) -> Self {
        PreparedData { dir, samples: index.samples, resolution: index.resolution, source: index.source.clone() }
    }

    /// What the dataset held then (`self`) and holds `now`, where they differ.
    fn differences(&self, now: &PreparedData) -> Vec<String> {
        let mut differ = Vec::new();
        if self.samples != now.samples {
            differ.push(format!("{} samples then, {} now", self.samples, now.samples));
        }
        if self.resolution != now.resolution {
            differ.push(format!("{} px then, {} px now", self.resolution, now.resolution));
        }
        if self.source != now.source {
            differ.push(format!("prepared from {:?} then, from {:?} now", self.source, now.source));
        }
        differ
    }
}

/// Refuses a prepared dataset whose images are not the size the model takes.
pub fn check_resolution(flag: &str, dir: &Path, dataset: &PreparedDataset, model: &ModelConfig) -> Result<()> {
    let (prepared, wanted) = (dataset.index.resolution, model.vision.image_size);
    if prepared != wanted {
        return Err(Error::config(format!(
            "{flag} {}: the dataset was prepared at {prepared} px but model {} takes {wanted} px images: prepare it \
             again with --resolution {wanted}",
            dir.display(),
            model.name
        )));
    }
    Ok(())
}

/// A run's training pairs.
pub enum TrainingData {
    /// Step `k` takes training samples `k*B..(k+1)*B` of the shapes world.
    Shapes { world: ShapesConfig, batch_size: usize, share: RankShare },
    /// Step `k` takes the samples [`EpochOrder`] gives it.
    Prepared { dataset: PreparedDataset, order: EpochOrder, share: RankShare },
}

/// Which part of each global batch this process trains on: rank `rank` of `ranks` takes rows
/// `rank * B / ranks .. (rank + 1) * B / ranks` (data-parallel training, `crate::dist`), so
/// the ranks' shares together are the batch one process would train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankShare {
    pub rank: usize,
    pub ranks: usize,
}

impl RankShare {
    pub const WHOLE: RankShare = RankShare { rank: 0, ranks: 1 };

    /// This share's rows of a batch of `batch` rows (which the ranks divide evenly).
    fn rows(self, batch: usize) -> std::ops::Range<usize> {
        let per_rank = batch / self.ranks;
        self.rank * per_rank..(self.rank + 1) * per_rank
    }
}

impl TrainingData {
    /// The training data of `config`, checked against the images `model` takes and, for a
    /// prepared dataset, against what the run recorded of it when it began.
    pub fn open(config: &TrainConfig, model: &ModelConfig) -> Result<Self> {
        let Some(recorded) = &config.train_data else {
            let (rendered, wanted) = (config.data.image_size, model.vision.image_size);
            if rendered != wanted {
                return Err(Error::config(format!(
                    "the shapes world renders {rendered} px images but {} takes {wanted} px",
                    model.name
                )));
            }
            return Ok(TrainingData::Shapes {
                world: config.data.clone(),
                batch_size: config.batch_size,
                share: RankShare::WHOLE,
            });
        };
        let dir = &recorded.dir;
        let dataset = PreparedDataset::open(dir)?;
        let changed = recorded.differences(&PreparedData::of(dir.clone(), &dataset.index));
        if !changed.is_empty() {
            return Err(Error::config(format!(
                "--data {}: the dataset changed since the run began ({}); a run trains on the data it started \
                 with: put that dataset back, or start a new run on this one",
                dir.display(),
                changed.join("; ")
            )));
        }
        if dataset.is_empty() {
            return Err(Error::config(format!("--data {}: the dataset holds no samples", dir.display())));
        }
        check_resolution("--data", dir, &dataset, model)?;
        let order = EpochOrder::new(dataset.len(), config.batch_size, config.seed)?;
        Ok(TrainingData::Prepared { dataset, order, share: RankShare::WHOLE })
    }

    /// The same data, of which this process trains on `share` of every batch.
    pub fn shared_out(mut self, new: RankShare) -> Self {
        let (TrainingData::Shapes { share, .. } | TrainingData::Prepared { share, .. }) = &mut self;
        *share = new;
        self
    }

    pub fn is_prepared(&self) -> bool {
        matches!(self, TrainingData::Prepared { .. })
    }

    /// The batch of 0-based step `step`, normalised and tokenised as `model` takes it.
    pub fn batch(&self, step: u64, tokenizer: &Tokenizer, model: &ModelConfig) -> Result<Batch> {
        match self {
            TrainingData::Shapes { world, batch_size, share } => {
                let rows = share.rows(*batch_size);
                let start = step * *batch_size as u64 + rows.start as u64;
                make_batch(world, Split::Train, start, rows.len(), tokenizer, model, MASTER_DTYPE)
            }
            TrainingData::Prepared { dataset, order, share } => {
                let samples = order.batch(step);
                prepared_batch(dataset, &samples[share.rows(samples.len())], tokenizer, model, MASTER_DTYPE)
            }
        }
    }

    /// The captions a BPE for this data is trained on.
    pub fn bpe_corpus(&self) -> Vec<String> {
        match self {
            TrainingData::Shapes { world, .. } => shapes::caption_corpus(world, SHAPES_BPE_CORPUS),
            TrainingData::Prepared { dataset, .. } => {
                let (n, take) = (dataset.len(), dataset.len().min(PREPARED_BPE_CORPUS));
                (0..take).map(|j| dataset.caption(j * n / take).caption.clone()).collect()
            }
        }
    }

    /// One line for the log: what the run trains on and how an epoch ends.
    pub fn describe(&self) -> String {
        match self {
            TrainingData::Shapes { .. } => "training on the shapes world".into(),
            TrainingData::Prepared { dataset, order, .. } => format!(
                "training on {} pairs: {} batches an epoch, each epoch in a new seeded order whose last {} pairs \
                 (less than a batch) sit that epoch out",
                dataset.len(),
                order.batches_per_epoch(),
                order.left_out_per_epoch()
            ),
        }
    }
}
