//! `msclip bench roofline`: the speed of light of every kernel of a GPU step, as one PNG: each
//! kernel (grouped by name and launch shape) at its measured memory and compute throughput as a
//! percentage of the device's peaks, its circle's area proportional to its time per step. The
//! input is `scripts/kernel_times.py --json` run over an Nsight Compute CSV that has the speed
//! of light metrics (scripts/gpu-session.sh's `profile` part makes both): the figures are
//! Nsight Compute's measurements, not a model.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use msclip::charts::{SolPoint, speed_of_light};
use serde_json::Value;

#[derive(Args)]
pub struct RooflineArgs {
    /// `scripts/kernel_times.py --json` output with the speed-of-light fields.
    file: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// The chart's title (say, the preset, batch and device).
    #[arg(long, default_value = "GPU step")]
    title: String,
}

pub fn run(args: RooflineArgs) -> anyhow::Result<()> {
    let path = args.file.display();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {path}"))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
    let points = points_of(&json).with_context(|| format!("{path}"))?;
    let title = format!("{}: each kernel's speed of light (Nsight Compute), circle area = time per step", args.title);
    speed_of_light(&args.out, &title, &points)?;
    println!("wrote {} ({} kernels)", args.out.display(), points.len());
    Ok(())
}

fn points_of(json: &Value) -> anyhow::Result<Vec<SolPoint>> {
    let kernels = json
        .get("kernels")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow::anyhow!("no \"kernels\" list: not scripts/kernel_times.py --json output"))?;
    let number = |k: &Value, key: &str| -> anyhow::Result<f64> {
        k.get(key).and_then(Value::as_f64).ok_or_else(|| {
            anyhow::anyhow!(
                "a kernel without {key:?}: the CSV had no speed-of-light metrics (profile with \
                 scripts/gpu-session.sh's profile part, which collects them)"
            )
        })
    };
    let text = |k: &Value, key: &str| k.get(key).and_then(Value::as_str).unwrap_or("?").to_string();
    kernels
        .iter()
        .map(|k| {
            Ok(SolPoint {
                // Name and grid: one kernel at several shapes is several points.
                label: format!("{} {}", text(k, "name"), text(k, "grid")),
                kind: text(k, "kind"),
                memory: number(k, "memory_sol_percent")?,
                compute: number(k, "compute_sol_percent")?,
                ms: number(k, "ms_per_step")?,
            })
        })
        .collect()
}
