//! What a run tells the user and leaves on disk: a progress bar, open_clip's console line,
//! and JSON-lines files of training losses and evaluation results.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::files::write_atomically;

/// A progress bar over the run's steps (hidden automatically when stderr is not a terminal).
pub fn progress_bar(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} steps  {elapsed_precise} (eta {eta})  {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}

/// One step's numbers, as open_clip's console line shows them.
pub struct StepLine {
    pub step: u64,
    pub total_steps: u64,
    pub samples_seen: u64,
    pub data_seconds: f64,
    pub batch_seconds: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub logit_scale: f64,
    pub loss: f64,
    pub loss_ema: f64,
}

impl std::fmt::Display for StepLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = 100.0 * (self.step + 1) as f64 / self.total_steps as f64;
        write!(
            f,
            "Train Step: {} [{}/{} ({percent:.0}%)] Data (t): {:.3} Batch (t): {:.3}, {:.2}/s LR: {:.6} Logit Scale: {:.3} Contrastive_loss: {:.5} ({:.4})",
            self.step + 1,
            self.samples_seen,
            self.total_steps * self.batch_size as u64,
            self.data_seconds,
            self.batch_seconds,
            self.batch_size as f64 / self.batch_seconds.max(1e-9),
            self.lr,
            self.logit_scale,
            self.loss,
            self.loss_ema,
        )
    }
}

/// Appends one JSON object as a line.
pub fn append_jsonl(path: &Path, record: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(record).map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(file, "{line}").map_err(|e| Error::io(path, e))
}

/// Every line of a JSON-lines file, parsed; a missing file is empty. A last line without its
/// newline is what a process killed mid-append leaves: it is skipped, any other bad line is an
/// error.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| Error::format(path.display().to_string(), e.to_string())))
        .collect()
}

/// Keeps the records of steps up to `step` (and drops a torn last line), rewriting the file
/// atomically when that changes it: a resumed run replays the steps after its checkpoint, and
/// the log must not hold them twice.
pub fn truncate_jsonl_after(path: &Path, step: u64) -> Result<()> {
    let rows = read_jsonl(path)?;
    let kept: Vec<&serde_json::Value> = rows.iter().filter(|r| r["step"].as_u64().is_some_and(|s| s <= step)).collect();
    let mut text = String::new();
    for row in &kept {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    let unchanged = std::fs::read_to_string(path).map(|old| old == text).unwrap_or(kept.is_empty());
    if unchanged {
        return Ok(());
    }
    write_atomically(path, text.as_bytes())
}
