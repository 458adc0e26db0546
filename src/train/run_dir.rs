//! The files that describe a run, shared by training (new and resumed) and `msclip eval`:
//! `config.json` (training and model config) and the tokenizer the run used.

use std::path::Path;

use serde_json::json;

use super::checkpoint::write_atomically;
use super::config::{TokenizerSource, TrainConfig};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::text::Tokenizer;

pub const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";

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

/// Trains a BPE of `vocab` tokens on `corpus` and saves it as the run's tokenizer.
pub fn train_run_tokenizer<'a>(
    corpus: impl IntoIterator<Item = &'a str>,
    vocab: usize,
    run_dir: &Path,
) -> Result<Tokenizer> {
    let tokenizer = Tokenizer::train_bpe(corpus, vocab)?;
    tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
    Ok(tokenizer)
}
