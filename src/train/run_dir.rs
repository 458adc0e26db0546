//! A run's directory: who may write it (a new run never reuses one silently; one process at a
//! time), and the files that describe the run, shared by training (new and resumed) and
//! `msclip eval`: `config.json` (training and model config) and the tokenizer the run used.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::{TokenizerSource, TrainConfig};
use crate::error::{Error, Result};
use crate::files::{DirLock, is_temporary, remove_stale_temporaries, write_atomically};
use crate::model::ModelConfig;
use crate::text::Tokenizer;

pub const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const CHECKPOINTS: &str = "checkpoints";

/// Every name msclip writes directly inside a run directory. `--overwrite` removes a directory
/// only when it holds nothing else, so a mistyped `--output` never deletes a user's files.
const RUN_FILES: &[&str] = &[
    CONFIG_FILE,
    TOKENIZER_FILE,
    CHECKPOINTS,
    "train_loss.jsonl",
    "results.jsonl",
    "loss.png",
    "accuracy.png",
    "eval.json",
];

/// Prepares the directory of a new run and locks it. An existing directory with anything in
/// it is refused, unless `overwrite`, which removes it first when it holds only run files.
pub fn create_new(run_dir: &Path, overwrite: bool) -> Result<DirLock> {
    let occupied = std::fs::read_dir(run_dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        if !overwrite {
            return Err(Error::config(format!(
                "the run directory {} exists already: continue that run with --resume latest, replace it with \
                 --overwrite, or choose another --name",
                run_dir.display()
            )));
        }
        let lock = DirLock::acquire(run_dir)?;
        let foreign = foreign_entries(run_dir)?;
        if !foreign.is_empty() {
            return Err(Error::config(format!(
                "--overwrite: {} holds files msclip did not write ({}); not removing it",
                run_dir.display(),
                foreign.join(", ")
            )));
        }
        std::fs::remove_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        drop(lock);
    }
    let checkpoints = run_dir.join(CHECKPOINTS);
    std::fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
    DirLock::acquire(run_dir)
}

/// Locks the directory of an existing run for resuming it and removes the temporaries a killed
/// process left in it.
pub fn open_existing(run_dir: &Path) -> Result<DirLock> {
    let config = run_dir.join(CONFIG_FILE);
    if !config.is_file() {
        return Err(Error::config(format!(
            "there is no run to resume in {}: {} is missing",
            run_dir.display(),
            config.display()
        )));
    }
    let lock = DirLock::acquire(run_dir)?;
    let checkpoints = run_dir.join(CHECKPOINTS);
    std::fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
    for dir in [run_dir, &checkpoints] {
        remove_stale_temporaries(dir)?;
    }
    Ok(lock)
}

/// The run a checkpoint file belongs to: `<run>/checkpoints/<file>`, where `<run>` has a
/// config.json.
pub fn run_dir_of_checkpoint(checkpoint: &Path) -> Result<PathBuf> {
    let folder = checkpoint.parent().filter(|p| p.file_name().is_some_and(|n| n == CHECKPOINTS));
    match folder.and_then(Path::parent) {
        Some(run) if run.join(CONFIG_FILE).is_file() => Ok(run.to_path_buf()),
        _ => Err(Error::config(format!(
            "{} is not inside a run's checkpoints/ folder (<run>/checkpoints/<file> with <run>/config.json), so its \
             run cannot be resumed",
            checkpoint.display()
        ))),
    }
}

/// Entries of a run directory (and of its checkpoints/) that msclip does not write.
fn foreign_entries(run_dir: &Path) -> Result<Vec<String>> {
    let list = |dir: &Path| -> Result<Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()).map_err(|e| Error::io(dir, e)))
            .collect()
    };
    let ours = |name: &str, allowed: &dyn Fn(&str) -> bool| {
        allowed(name) || name == DirLock::file_name() || is_temporary(std::ffi::OsStr::new(name))
    };
    let mut foreign: Vec<String> =
        list(run_dir)?.into_iter().filter(|n| !ours(n, &|n| RUN_FILES.contains(&n))).collect();
    let checkpoints = run_dir.join(CHECKPOINTS);
    if checkpoints.is_dir() {
        let is_checkpoint = |n: &str| n.ends_with(".safetensors");
        foreign.extend(
            list(&checkpoints)?.into_iter().filter(|n| !ours(n, &is_checkpoint)).map(|n| format!("{CHECKPOINTS}/{n}")),
        );
    } else if checkpoints.exists() {
        foreign.push(CHECKPOINTS.into());
    }
    Ok(foreign)
}

/// Writes `<run_dir>/config.json` atomically.
pub fn write_run_config(run_dir: &Path, train: &TrainConfig, model: &ModelConfig) -> Result<()> {
    let text = serde_json::to_string_pretty(&json!({ "train": train, "model": model }))
        .map_err(|e| Error::format("config", e.to_string()))?;
    write_atomically(&run_dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads `<run_dir>/config.json` back.
pub fn read_run_config(run_dir: &Path) -> Result<(TrainConfig, ModelConfig)> {
    let path = run_dir.join(CONFIG_FILE);
    let bad = |e: serde_json::Error| Error::format(path.display().to_string(), e.to_string());
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
    Ok((
        serde_json::from_value(value["train"].clone()).map_err(bad)?,
        serde_json::from_value(value["model"].clone()).map_err(bad)?,
    ))
}

/// The tokenizer of an existing run: its saved trained BPE, CLIP's, or the configured file.
pub fn load_run_tokenizer(train: &TrainConfig, run_dir: &Path) -> Result<Tokenizer> {
    match &train.tokenizer {
        TokenizerSource::TrainedBpe => Tokenizer::from_file(&run_dir.join(TOKENIZER_FILE)),
        TokenizerSource::Clip => Tokenizer::clip(),
        TokenizerSource::File(path) => Tokenizer::from_file(path),
    }
}

/// Saves a tokenizer trained for the run as the run's tokenizer.json.
pub fn save_run_tokenizer(tokenizer: &Tokenizer, run_dir: &Path) -> Result<()> {
    tokenizer.save(&run_dir.join(TOKENIZER_FILE))
}
