//! A run's `checkpoints/` folder: `latest.safetensors`, the newest `step_N.safetensors`
//! (as many as `--keep-checkpoints` says), and nothing else of ours.

use std::path::PathBuf;

use super::checkpoint::{self, TrainingState};
use crate::error::{Error, Result};
use crate::files::{link_atomically, write_atomically};

pub const LATEST: &str = "latest.safetensors";

pub struct CheckpointDir {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// The folder (which must exist) and how many `step_N` files to keep besides `latest`.
    pub fn new(dir: PathBuf, keep: usize) -> Self {
        CheckpointDir { dir, keep }
    }

    pub fn latest(&self) -> PathBuf {
        self.dir.join(LATEST)
    }

    /// Writes `latest` and, when any are kept, `step_N` as a second name of the same file; then
    /// removes the `step_K` files (K up to N) beyond the newest `keep`. Files of later steps,
    /// left by a run that was resumed from an earlier checkpoint, are not touched.
    pub fn save(&self, state: &TrainingState) -> Result<()> {
        let latest = self.latest();
        write_atomically(&latest, &checkpoint::to_bytes(state)?)?;
        if self.keep > 0 {
            link_atomically(&latest, &self.dir.join(step_file(state.step)))?;
        }
        let mut older: Vec<u64> = self.steps()?.into_iter().filter(|&k| k <= state.step).collect();
        older.sort_unstable_by(|a, b| b.cmp(a));
        for k in older.into_iter().skip(self.keep) {
            let path = self.dir.join(step_file(k));
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// What a failing run can still be resumed from, as a sentence.
    pub fn describe(&self) -> String {
        if !self.latest().exists() {
            return "No checkpoint was written before it".into();
        }
        match self.steps().ok().and_then(|s| s.into_iter().max()) {
            Some(k) => format!("The checkpoints in {} (newest: step {k}) are intact", self.dir.display()),
            None => format!("{} is intact", self.latest().display()),
        }
    }

    /// The steps of the `step_N.safetensors` files present.
    pub fn steps(&self) -> Result<Vec<u64>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut steps = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| Error::io(&self.dir, e))?.file_name();
            if let Some(k) = name.to_str().and_then(parse_step_file) {
                steps.push(k);
            }
        }
        Ok(steps)
    }
}

fn step_file(step: u64) -> String {
    format!("step_{step}.safetensors")
}

fn parse_step_file(name: &str) -> Option<u64> {
    name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()
}
