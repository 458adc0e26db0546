//! `msclip profile step`: the driver calls of training steps of a preset on a GPU device (the
//! emulator by default). One warm-up step runs first; the next `--steps` are counted, printed
//! per step and written as JSON with `--json`. On a real GPU every host synchronisation and
//! every allocation inside a step costs time, so these counts are the baseline that work on
//! the GPU step brings down.

use std::path::PathBuf;

use clap::Args;
use msclip::backend::gpu::counters::DriverCounters;
use msclip::backend::gpu::modules;
use msclip::files::write_atomically;
use serde_json::{Value, json};

use super::bounds::{StepBound, bounds_json, bounds_table, gemm_json, step_bounds};
use super::steps::{StepsArgs, WARMUP_STEPS, count_steps};
use msclip::Device;

#[derive(Args)]
pub struct StepArgs {
    #[command(flatten)]
    steps_args: StepsArgs,
    /// The GPU device whose driver calls are counted: emu (the CUDA kernels on the host's SIMT
    /// emulator, whose profiler also gives each kernel's bound) or cuda. Both receive the same
    /// calls.
    #[arg(long, default_value = "emu")]
    device: Device,
    /// Steps counted after the warm-up step; the table shows their mean.
    #[arg(long, default_value_t = 1)]
    steps: u64,
    /// Also write the counts (summed over the counted steps) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Kernels listed under the table.
const TOP_KERNELS: usize = 10;

pub fn run(args: StepArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    if !args.device.is_gpu() {
        anyhow::bail!("--device {}: profiling counts GPU driver calls; use emu or cuda", args.device);
    }
    let (model, config) = args.steps_args.prepare(args.device, args.steps)?;
    let counted = count_steps(&model, &config, args.steps)?;
    let bounds = step_bounds(&counted, args.steps);
    print!("{}{}", table(&args, &counted.counters), bounds_table(&bounds));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report_json(&args, &counted.counters, &bounds))? + "\n";
        write_atomically(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One counted quantity: its JSON key, its table label, how many (calls, or kernels when not
/// `additive`) and, where calls move or reserve memory, how many bytes.
struct Row {
    key: &'static str,
    label: &'static str,
    count: u64,
    bytes: Option<u64>,
    /// Whether the count adds up over steps (a count of calls), so that it has a mean per step.
    additive: bool,
}

fn rows(c: &DriverCounters) -> Vec<Row> {
    let row = |key, label, count, bytes| Row { key, label, count, bytes, additive: true };
    vec![
        row("launches", "kernel launches", c.launches(), None),
        Row { additive: false, ..row("distinct_kernels", "distinct kernels", c.distinct_kernels() as u64, None) },
        row("gemms", "GEMM calls", c.gemms(), None),
        Row { additive: false, ..row("gemm_shapes", "GEMM shapes", c.gemms_by_spec.len() as u64, None) },
        row("allocations", "driver allocations", c.allocations.count, Some(c.allocations.bytes)),
        row("cached_allocations", "cached allocations", c.cached_allocations.count, Some(c.cached_allocations.bytes)),
        row("frees", "driver frees", c.frees.count, Some(c.frees.bytes)),
        row("uploads", "H2D copies", c.uploads.count, Some(c.uploads.bytes)),
        row("downloads", "D2H copies", c.downloads.count, Some(c.downloads.bytes)),
        row("device_copies", "D2D copies", c.device_copies.count, Some(c.device_copies.bytes)),
        row("memsets", "memsets", c.memsets.count, Some(c.memsets.bytes)),
        row("synchronizes", "synchronizes", c.synchronizes, None),
        row("host_syncs", "host syncs", c.host_syncs(), None),
    ]
}

/// The counts per counted step, as a table.
fn table(args: &StepArgs, counts: &DriverCounters) -> String {
    let steps = args.steps;
    let per_step = |n: u64| {
        if steps == 1 { n.to_string() } else { format!("{:.1}", n as f64 / steps as f64) }
    };
    let volume = |bytes: u64| format!("{:10.3} MB {:>12} B", bytes as f64 / 1e6 / steps as f64, per_step(bytes));
    let run = &args.steps_args;
    let mut out = format!(
        "profile step: preset {}, batch {}, {} on {}; {WARMUP_STEPS} warm-up step, then {steps} counted\n",
        run.preset, run.batch, run.precision, args.device
    );
    out += &if steps == 1 {
        "driver calls per step\n".to_string()
    } else {
        format!("driver calls per step (mean of {steps}; kernels and GEMM shapes: distinct over all {steps})\n")
    };
    for row in rows(counts) {
        let count = if row.additive { per_step(row.count) } else { row.count.to_string() };
        let bytes = row.bytes.map(volume).unwrap_or_default();
        out += format!("  {:<18} {count:>10} {bytes}", row.label).trim_end();
        out += "\n";
    }
    out += "top kernels by launches per step\n";
    for (name, launches) in counts.top_kernels(TOP_KERNELS) {
        let resources = modules::kernel_resources(name)
            .map(|k| format!("  {:>3} regs {:>6} B static smem", k.registers, k.shared_bytes))
            .unwrap_or_default();
        out += &format!("  {name:<40} {:>10}{resources}\n", per_step(launches));
    }
    out
}

/// The run's settings and every count, summed over the counted steps.
fn report_json(args: &StepArgs, counts: &DriverCounters, bounds: &[StepBound]) -> Value {
    let mut totals = serde_json::Map::new();
    for row in rows(counts) {
        totals.insert(row.key.into(), json!(row.count));
        if let Some(bytes) = row.bytes {
            totals.insert(format!("{}_bytes", row.key), json!(bytes));
        }
    }
    let kernels: Vec<Value> = counts
        .top_kernels(usize::MAX)
        .into_iter()
        .map(|(name, launches)| {
            let resources = modules::kernel_resources(name);
            json!({ "name": name, "launches": launches, "registers": resources.map(|k| k.registers),
                "static_shared_bytes": resources.map(|k| k.shared_bytes) })
        })
        .collect();
    let gemms: Vec<Value> = counts.gemms_by_spec.iter().map(|(spec, &calls)| gemm_json(spec, calls)).collect();
    let run = &args.steps_args;
    json!({
        "preset": run.preset,
        "batch": run.batch,
        "layers": run.layers,
        "device": args.device.to_string(),
        "precision": run.precision.to_string(),
        "warmup_steps": WARMUP_STEPS,
        "counted_steps": args.steps,
        "totals": totals,
        "kernels": kernels,
        "gemms": gemms,
        "modelled_lower_bounds": bounds_json(bounds),
    })
}
