//! `msclip bench chart`: result files of `msclip bench step --json` and of
//! `benches/pytorch_reference.py --json` as one PNG of stacked bars, the step's time per kind of
//! op, so fused and unfused, or ours and PyTorch's, stand side by side.
//!
//! A `bench step` file is one bar: its breakdown step (every backend call timed, so on a GPU
//! each call carries one synchronisation) split by kind of op, with the rest as "other". A
//! PyTorch file is one bar per model, its median step whole: the reference does not break its
//! step down.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use msclip::charts::{Bar, stacked_bars};
use serde_json::Value;

#[derive(Args)]
pub struct ChartArgs {
    /// Result files: `msclip bench step --json` outputs and `benches/pytorch_reference.py
    /// --json` outputs, in the order their bars are drawn (top first).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ChartArgs) -> anyhow::Result<()> {
    let mut bars = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        bars.extend(bars_of(&json).with_context(|| format!("{}", path.display()))?);
    }
    let title = "Time per training step by kind of op (ms)";
    stacked_bars(&args.out, title, "milliseconds per step", &bars)?;
    println!("wrote {} ({} bars)", args.out.display(), bars.len());
    Ok(())
}

/// The bars of one result file, or why it is not one.
fn bars_of(json: &Value) -> anyhow::Result<Vec<Bar>> {
    if let Some(breakdown) = json.get("breakdown") {
        return Ok(vec![bench_step_bar(json, breakdown)?]);
    }
    if let Some(results) = json.get("results").and_then(Value::as_array) {
        let device = json.get("device").and_then(Value::as_str).unwrap_or("?");
        return results.iter().map(|r| pytorch_bar(r, device)).collect();
    }
    anyhow::bail!(
        "neither `msclip bench step --json` output (no \"breakdown\") nor `pytorch_reference.py --json` output (no \"results\")"
    )
}

fn field<'a>(json: &'a Value, key: &str) -> anyhow::Result<&'a Value> {
    json.get(key).ok_or_else(|| anyhow::anyhow!("missing field {key:?}"))
}

fn number(json: &Value, key: &str) -> anyhow::Result<f64> {
    field(json, key)?.as_f64().ok_or_else(|| anyhow::anyhow!("field {key:?} is not a number"))
}

fn text<'a>(json: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    field(json, key)?.as_str().ok_or_else(|| anyhow::anyhow!("field {key:?} is not a string"))
}

fn bench_step_bar(json: &Value, breakdown: &Value) -> anyhow::Result<Bar> {
    let rows = breakdown.as_array().ok_or_else(|| anyhow::anyhow!("\"breakdown\" is not a list"))?;
    let mut segments = Vec::new();
    for row in rows {
        segments.push((text(row, "op")?.to_string(), 1e3 * number(row, "seconds")?));
    }
    let timed: f64 = segments.iter().map(|(_, ms)| ms).sum();
    let whole = 1e3 * number(json, "breakdown_step_seconds")?;
    segments.push(("other".to_string(), (whole - timed).max(0.0)));
    let precision = json.get("precision").and_then(Value::as_str).unwrap_or("");
    let label = format!(
        "ours, {} batch {} {precision} on {}: {}",
        text(json, "preset")?,
        number(json, "batch")?,
        text(json, "device")?,
        text(json, "fusion")?
    );
    Ok(Bar { label, segments })
}

fn pytorch_bar(result: &Value, device: &str) -> anyhow::Result<Bar> {
    let label = format!("PyTorch, {} batch {} on {device}", text(result, "model")?, number(result, "batch")?);
    let segments = vec![("PyTorch step (not broken down)".to_string(), number(result, "step_ms_median")?)];
    Ok(Bar { label, segments })
}
