//! What a resumed run may change. A run is its config.json: the settings that decide what is
//! learnt (model, data, batch, optimizer, schedule shape, seed) must stay; where it runs and
//! what it reports may change, and `steps` may grow (or shrink, down to the checkpoint's step),
//! the cosine schedule then spanning the new total from the step it resumes at.

use super::config::TrainConfig;
use crate::error::{Error, Result};

/// Settings a resumed run may change. `name` and `output_dir` say where the run is, which may
/// differ from where it was (a moved folder); they are never reported as changes.
const MAY_CHANGE: &[&str] = &[
    "steps",
    "device",
    "precision",
    "cuda_graph",
    "log_every",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "eval_samples",
    "quick_eval_every",
    "quick_eval_samples",
    "val_data",
];
const LOCATION: &[&str] = &["name", "output_dir"];

/// The settings `requested` changes against the run's `saved` config, as `key: old -> new`
/// lines; an error listing every difference that may not change.
pub fn changes(saved: &TrainConfig, requested: &TrainConfig) -> Result<Vec<String>> {
    let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        other => Err(Error::config(format!("training config does not serialise to an object: {other:?}"))),
    };
    let (old, new) = (as_map(saved)?, as_map(requested)?);
    let (mut applied, mut refused) = (Vec::new(), Vec::new());
    let null = serde_json::Value::Null;
    let keys = old.keys().chain(new.keys().filter(|k| !old.contains_key(*k)));
    for key in keys {
        let (a, b) = (old.get(key).unwrap_or(&null), new.get(key).unwrap_or(&null));
        if a == b || LOCATION.contains(&key.as_str()) {
            continue;
        }
        let line = format!("{key}: {a} -> {b}");
        if MAY_CHANGE.contains(&key.as_str()) { applied.push(line) } else { refused.push(line) }
    }
    if !refused.is_empty() {
        return Err(Error::config(format!(
            "resuming {}: these settings differ from the run's config.json and cannot change mid-run: {}. Resume \
             without them, or start a new run (another --name) to train with them",
            requested.run_dir().display(),
            refused.join("; ")
        )));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_logging_may_change_the_rest_is_listed() {
        let saved = TrainConfig::tiny_default();
        let mut requested = saved.clone();
        requested.steps = 900;
        requested.log_every = 1;
        requested.output_dir = "moved".into();
        assert_eq!(changes(&saved, &requested).unwrap(), ["log_every: 50 -> 1", "steps: 650 -> 900"]);
        requested.batch_size = 64;
        requested.seed = 3;
        let err = changes(&saved, &requested).unwrap_err().to_string();
        assert!(err.contains("batch_size: 128 -> 64") && err.contains("seed: 0 -> 3"), "{err}");
        assert!(!err.contains("steps"), "{err}");
    }
}
