//! `msclip profile kernels`: one training step's kernels on the emulator's profiler, a row per
//! kernel and launch shape (or per kernel with `--per-kernel`): global-memory requests, sectors
//! per request and sector efficiency, the unique bytes moved against the launch code's
//! footprint, shared-memory wavefronts per request, tensor-core FLOPs, theoretical sm_90
//! occupancy, and the modelled lower bound on an H100 SXM and an H200. The GEMMs (the CPU
//! reference on the emulator) follow with their bounds, then the step's sum of bounds.

use std::path::PathBuf;

use clap::Args;
use msclip::Device;
use msclip::backend::gpu::GemmSpec;
use msclip::backend::gpu::kernel_stats::{Grouping, KernelStats, gemm_bound, gemm_work};
use msclip::backend::gpu::roofline::{H100_SXM, H200};
use msclip::files::write_atomically;
use serde_json::{Value, json};

use super::bounds::{bounds_json, bounds_table, gemm_json, seconds_by_device, step_bounds};
use super::steps::{StepsArgs, WARMUP_STEPS, count_steps};

#[derive(Args)]
pub struct KernelsArgs {
    #[command(flatten)]
    steps_args: StepsArgs,
    /// One row per kernel, its launch shapes summed.
    #[arg(long)]
    per_kernel: bool,
    /// Also write every row as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: KernelsArgs) -> anyhow::Result<()> {
    let (model, config) = args.steps_args.prepare(Device::Emu, 1)?;
    let counted = count_steps(&model, &config, 1)?;
    let grouping = if args.per_kernel { Grouping::Kernel } else { Grouping::KernelAndShape };
    let mut rows = KernelStats::group(&counted.profiles, grouping);
    rows.sort_by(|a, b| b.bound(&H100_SXM).seconds.total_cmp(&a.bound(&H100_SXM).seconds));
    let bounds = step_bounds(&counted, 1);
    let run = &args.steps_args;
    println!(
        "profile kernels: preset {}{}, batch {}, {} on emu; {WARMUP_STEPS} warm-up step, then 1 profiled",
        run.preset,
        run.layers.map(|l| format!(" with {l} layers")).unwrap_or_default(),
        run.batch,
        run.precision
    );
    print!("{}", kernel_table(&rows));
    print!("{}", gemm_table(&counted.counters.gemms_by_spec));
    print!("{}", bounds_table(&bounds));
    if let Some(path) = &args.json {
        let report = json!({
            "preset": run.preset, "batch": run.batch, "layers": run.layers,
            "precision": run.precision.to_string(),
            "kernels": rows.iter().map(row_json).collect::<Vec<_>>(),
            "gemms": counted.counters.gemms_by_spec.iter().map(|(s, &calls)| gemm_json(s, calls)).collect::<Vec<_>>(),
            "modelled_lower_bounds": bounds_json(&bounds),
        });
        write_atomically(path, (serde_json::to_string_pretty(&report)? + "\n").as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn optional(value: Option<f64>, precision: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.precision$}"))
}

fn shape(row: &KernelStats) -> String {
    match row.config {
        Some(c) => {
            let dims = |d: [u32; 3]| d.iter().filter(|&&x| x > 1).map(u32::to_string).collect::<Vec<_>>().join("x");
            let (grid, block) = (dims(c.grid), dims(c.block));
            format!("{}x{}", if grid.is_empty() { "1".into() } else { grid }, block)
        }
        None => "(several)".into(),
    }
}

const KERNEL_HEADER: &str = "kernel                              launches  grid x block     ld sec/req  st sec/req  \
                             sect.eff  unique MB  /footprint  smem wf/req  bank conf.  tensor GFLOP  occupancy        \
                             H100 us   H200 us\n";

fn kernel_table(rows: &[KernelStats]) -> String {
    let mut out = format!("kernels (bounds modelled, not measured)\n{KERNEL_HEADER}");
    for r in rows {
        let occupancy = r.occupancy().map_or("-".into(), |o| format!("{:.0}% {:?}", o.fraction * 100.0, o.limited_by));
        out += &format!(
            "{:<36}{:>8}  {:<15}{:>11}{:>12}{:>10}{:>11.3}{:>12}{:>13}{:>12}{:>14.3}  {:<15}{:>9.2}{:>10.2}\n",
            r.kernel,
            r.launches,
            shape(r),
            optional(r.load_sectors_per_request(), 1),
            optional(r.store_sectors_per_request(), 1),
            optional(r.sector_efficiency().map(|e| e * 100.0), 1) + "%",
            r.unique_sector_bytes() as f64 / 1e6,
            optional(r.over_footprint(), 2),
            optional(r.shared_wavefronts_per_request(), 2),
            optional(r.bank_conflict_factor(), 2),
            r.counters.tensor_flops as f64 / 1e9,
            occupancy,
            r.bound(&H100_SXM).seconds * 1e6,
            r.bound(&H200).seconds * 1e6,
        );
    }
    out
}

fn gemm_table(gemms: &std::collections::BTreeMap<GemmSpec, u64>) -> String {
    let mut out = "GEMMs (the CPU reference on the emulator: bounds from the shapes)\n".to_string();
    out += "dtype  batch x m x n x k             op      calls     GFLOP   min MB   H100 us   H200 us\n";
    for (spec, &calls) in gemms {
        let (bytes, flops) = gemm_work(spec);
        let op = format!("{}{}", if spec.trans_a { "T" } else { "N" }, if spec.trans_b { "T" } else { "N" });
        // Batch entries not back to back (a weight shared by the samples: a's stride 0) are
        // their own row; the strides follow the row.
        let strides = match spec.batch_strides {
            s if s == spec.matrix_elements() => String::new(),
            [a, b, c] => format!("   batch strides {a}/{b}/{c}"),
        };
        out += &format!(
            "{:<7}{:<30}{op:<6}{calls:>7}{:>10.3}{:>9.3}{:>10.2}{:>10.2}{strides}\n",
            spec.dtype.name(),
            format!("{} x {} x {} x {}", spec.batch, spec.m, spec.n, spec.k),
            (flops * calls) as f64 / 1e9,
            (bytes * calls) as f64 / 1e6,
            gemm_bound(spec, calls, &H100_SXM).seconds * 1e6,
            gemm_bound(spec, calls, &H200).seconds * 1e6,
        );
    }
    out
}

fn row_json(r: &KernelStats) -> Value {
    let c = &r.counters;
    let occupancy = r.occupancy();
    json!({
        "kernel": r.kernel,
        "launches": r.launches,
        "grid": r.config.map(|c| c.grid),
        "block": r.config.map(|c| c.block),
        "dynamic_shared_bytes": r.config.map(|c| c.shared_bytes),
        "global_load_requests": c.global_load_requests,
        "global_load_sectors": c.global_load_sectors,
        "global_load_bytes": c.global_load_bytes,
        "global_store_requests": c.global_store_requests,
        "global_store_sectors": c.global_store_sectors,
        "global_store_bytes": c.global_store_bytes,
        "sector_efficiency": r.sector_efficiency(),
        "unique_sectors_read": c.unique_sectors_read,
        "unique_sectors_written": c.unique_sectors_written,
        "footprint_read_bytes": r.footprint.map(|f| f.read_bytes),
        "footprint_written_bytes": r.footprint.map(|f| f.written_bytes),
        "unique_over_footprint": r.over_footprint(),
        "shared_load_requests": c.shared_load_requests,
        "shared_load_wavefronts": c.shared_load_wavefronts,
        "shared_store_requests": c.shared_store_requests,
        "shared_store_wavefronts": c.shared_store_wavefronts,
        "shared_load_ideal_wavefronts": c.shared_load_ideal_wavefronts,
        "shared_store_ideal_wavefronts": c.shared_store_ideal_wavefronts,
        "bank_conflict_factor": r.bank_conflict_factor(),
        "mma_sync_instructions": c.mma_sync_instructions,
        "wgmma_instructions": c.wgmma_instructions,
        "tensor_flops": c.tensor_flops,
        "occupancy": occupancy.map(|o| o.fraction),
        "occupancy_limited_by": occupancy.map(|o| format!("{:?}", o.limited_by)),
        "bound_seconds": seconds_by_device(|roof| r.bound(roof).seconds),
    })
}
