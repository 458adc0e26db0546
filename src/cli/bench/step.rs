//! `msclip bench step`: the training step a user would run (forward, backward, clipping, AdamW),
//! timed on a device after warm-up steps. Reports pairs/s and the step time, the step's FLOPs
//! counted from its ops' shapes and the MFU they give on a GPU with a known peak, the device
//! memory the step holds, the driver calls per step, and where the time goes per kind of op
//! (from one more step with every backend call timed; on the emulator, whose wall time says
//! nothing about a GPU's, the profiler's modelled lower bounds per kind instead, labelled so).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use msclip::Device;
use msclip::backend::gpu::buffer::{live_bytes, measure_allocations};
use msclip::backend::gpu::counters::{DriverCounters, measure};
use msclip::backend::gpu::emu::{self, Instrumentation, Schedule};
use msclip::backend::gpu::kernel_stats::{Grouping, KernelStats, gemm_bound};
use msclip::backend::gpu::roofline::{DEVICE_ROOFS, DeviceRoof, H100_SXM, H200};
use msclip::backend::gpu::{self, pool};
use msclip::backend::timed::{self, OpKind, OpTimes};
use msclip::ops::flops::{self, FlopCounts};
use msclip::train::{Steps, SyntheticCaptions, new_run_tokenizer};
use serde_json::{Value, json};

use super::trace::chrome_trace;
use super::variants::{KernelChoice, Unfused, Variants};
use crate::cli::profile::steps::StepsArgs;

#[derive(Args)]
pub struct StepArgs {
    #[command(flatten)]
    steps_args: StepsArgs,
    /// cpu, emu (the CUDA kernels on the host's SIMT emulator: its times are the emulator's) or
    /// cuda.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Steps timed after the warm-up.
    #[arg(long, default_value_t = 5)]
    steps: u64,
    /// Steps run before timing (the first fills the caching allocator and the GEMM plans).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Fusions to turn off, comma-separated, to measure what each one buys: `modality` runs
    /// the image tower and then the text tower instead of the shared layers over both at once;
    /// the others run the fused op as a composition of plain ops (FLOPs still counted as the
    /// model's, so MFU compares).
    #[arg(long, value_delimiter = ',')]
    unfused: Vec<Unfused>,
    /// Kernel variants to force, comma-separated KERNEL=VARIANT: `attention=q32k32` (or q64k64,
    /// q64k32, q32k64) runs every bf16 attention call in that tile shape.
    #[arg(long, value_delimiter = ',')]
    kernel: Vec<KernelChoice>,
    /// on (GPU devices): steps are issued as training issues them: the first op by op, then
    /// each one a launch of a captured CUDA graph of the whole step (on the emulator, its
    /// recording of the same calls) with that step's batch and learning rate written into the
    /// graph's inputs; captured again when a batch's captions outgrow it. The breakdown step
    /// still runs op by op. off: every step is issued op by op.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    cuda_graph: Switch,
    /// shapes: each step renders its batch of the shapes world on the host, as training does
    /// (inside the timed step). synthetic: one batch of random images and captions of 6-24
    /// tokens, made before timing and uploaded every step, to time the step alone.
    /// synthetic-full: the same with every caption filling the context (77 tokens for the B
    /// presets), the text work of open_clip, which runs every position.
    #[arg(long, value_enum, default_value_t = Data::Shapes)]
    data: Data,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the breakdown step's backend calls to this file as a Chrome/Perfetto trace.
    #[arg(long)]
    trace: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Data {
    Shapes,
    Synthetic,
    SyntheticFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// The timed steps' measurements.
struct Timing {
    /// Wall time of each timed step, each ended by reading its loss (so the device's work is in).
    seconds: Vec<f64>,
    /// Of each step's wall time, the host's part before it waits for the loss: issuing the
    /// step's work, and any wait inside (an upload waiting for pinned staging space). On a GPU,
    /// near the step time means the device waited on the host.
    issue_seconds: Vec<f64>,
    /// Forward FLOPs of all the timed steps.
    flops: FlopCounts,
    counters: DriverCounters,
    /// Device bytes held at the peak of the timed steps (persistent state included); None on the CPU.
    peak_bytes: Option<usize>,
    /// Graphs captured during the timed steps (a batch whose captions outgrew the graph's).
    recaptures: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

impl Timing {
    fn median(&self) -> f64 {
        median(&self.seconds)
    }

    fn per_step(&self, n: u64) -> f64 {
        n as f64 / self.seconds.len() as f64
    }

    /// Training FLOPs of one step (forward and backward).
    fn step_flops(&self) -> f64 {
        self.flops.training_step() / self.seconds.len() as f64
    }
}

impl StepArgs {
    fn variants(&self) -> Variants<'_> {
        Variants { unfused: &self.unfused, kernels: &self.kernel }
    }
}

pub fn run(args: StepArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    args.variants().check(args.steps_args.precision)?;
    args.variants().apply(|| measure_step(&args))
}

/// The run, with the variants applied.
fn measure_step(args: &StepArgs) -> anyhow::Result<()> {
    let device = args.device;
    let total_steps = args.warmup + args.steps + 1;
    let (model, mut config) = args.steps_args.prepare(device, total_steps)?;
    let use_graph = device.is_gpu() && args.cuda_graph == Switch::On;
    if use_graph && args.warmup < 2 {
        anyhow::bail!("--cuda-graph on needs --warmup 2 or more: the first step runs op by op, the second captures");
    }
    config.cuda_graph = use_graph;
    let model = args.variants().model(model);
    let tokenizer = new_run_tokenizer(&config, &model)?;
    let mut runner = Steps::new(&model, &config, &tokenizer)?;
    match args.data {
        Data::Shapes => {}
        Data::Synthetic => runner = runner.with_synthetic_data(SyntheticCaptions::ShapesLike)?,
        Data::SyntheticFull => runner = runner.with_synthetic_data(SyntheticCaptions::FullContext)?,
    }
    let check = |k: u64, loss: f64| match loss.is_finite() {
        true => Ok(()),
        false => Err(anyhow::anyhow!("the loss of step {} is {loss}", k + 1)),
    };
    for k in 0..args.warmup {
        check(k, runner.run_issued(k)?.loss.item()?)?;
    }
    let captured_before = runner.captures();

    let timed_steps = args.warmup..args.warmup + args.steps;
    let held_before = live_bytes();
    let (mut seconds, mut issue_seconds) = (Vec::new(), Vec::new());
    let (((result, extra_bytes), counted_flops), counters) = measure(|| {
        flops::count(|| {
            measure_allocations(|| {
                timed_steps.clone().try_for_each(|k| {
                    let started = Instant::now();
                    // Returns when the host has issued the step; reading the loss waits for it.
                    let loss = runner.run_issued(k)?.loss;
                    issue_seconds.push(started.elapsed().as_secs_f64());
                    check(k, loss.item()?)?;
                    seconds.push(started.elapsed().as_secs_f64());
                    anyhow::Ok(())
                })
            })
        })
    });
    result?;
    let recaptures = runner.captures() - captured_before;
    let peak_bytes = device.is_gpu().then_some(held_before + extra_bytes);

    // One more step, for the breakdown: every backend call timed and, on the emulator, every
    // launch profiled for its bound.
    let breakdown_step = args.warmup + args.steps;
    let profiling = device == Device::Emu;
    if profiling {
        emu::take_profiles();
    }
    let mut breakdown = || {
        measure(|| {
            let started = Instant::now();
            let ((result, measured), flops) =
                flops::count(|| timed::measure(|| check(breakdown_step, runner.run(breakdown_step)?.loss.item()?)));
            (result, measured, flops, started.elapsed().as_secs_f64())
        })
    };
    let ((result, measured, breakdown_flops, breakdown_seconds), breakdown_counters) =
        if profiling { emu::instrument(Instrumentation::Profiler, Schedule::Forward, breakdown) } else { breakdown() };
    result?;
    // A graph launch runs no op on the host, so nothing is counted then: each timed step counts
    // as the breakdown step's ops (op by op, captions packed without the graph's padding, so
    // the padding's work is not counted as useful).
    let flops = match use_graph {
        true => (0..args.steps).fold(FlopCounts::default(), |mut sum, _| {
            sum += breakdown_flops;
            sum
        }),
        false => counted_flops,
    };
    let timing = Timing { seconds, issue_seconds, flops, counters, peak_bytes, recaptures };
    let bounds = profiling.then(|| bounds_by_kind(&emu::take_profiles(), &breakdown_counters));

    let op_times = measured.times;
    let report = Report { args, device_name: device_name(device)?, timing, op_times, breakdown_seconds, bounds };
    print!("{}", report.text());
    if let Some(path) = &args.json {
        msclip::files::write_atomically(path, serde_json::to_string_pretty(&report.json())?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.trace {
        let process = format!("msclip bench step ({}) on {}", report.fusion(), report.device_name);
        let trace = chrome_trace(&measured.events, &process);
        msclip::files::write_atomically(path, serde_json::to_string(&trace)?.as_bytes())?;
        println!("wrote {} ({} backend calls of the breakdown step)", path.display(), measured.events.len());
    }
    Ok(())
}

fn device_name(device: Device) -> anyhow::Result<String> {
    Ok(match device {
        Device::Cpu => format!("{} threads", rayon::current_num_threads()),
        gpu_device => gpu::driver(gpu_device)?.device_name(),
    })
}

/// The roof of the GPU a device name names, if it has one.
fn roof_of(device_name: &str) -> Option<&'static DeviceRoof> {
    let name = device_name.to_ascii_lowercase();
    if name.contains("h200") {
        Some(&H200)
    } else if name.contains("h100") {
        Some(&H100_SXM)
    } else {
        None
    }
}

/// Per roof, the modelled lower bound of each kind of op in one profiled step: its kernels'
/// bounds from their profiles, GEMMs' from their shapes.
fn bounds_by_kind(profiles: &[emu::LaunchProfile], counters: &DriverCounters) -> Vec<(&'static DeviceRoof, Vec<f64>)> {
    let rows = KernelStats::group(profiles, Grouping::KernelAndShape);
    DEVICE_ROOFS
        .iter()
        .map(|roof| {
            let mut seconds = vec![0.0; OpKind::ALL.len()];
            for row in &rows {
                seconds[OpKind::of_kernel(&row.kernel) as usize] += row.bound(roof).seconds;
            }
            for (spec, &calls) in &counters.gemms_by_spec {
                seconds[OpKind::Gemm as usize] += gemm_bound(spec, calls, roof).seconds;
            }
            (roof, seconds)
        })
        .collect()
}

struct Report<'a> {
    args: &'a StepArgs,
    device_name: String,
    timing: Timing,
    op_times: OpTimes,
    /// Wall time of the step the op times come from.
    breakdown_seconds: f64,
    /// On the emulator: per roof, the bound of each kind of op (in `OpKind::ALL` order).
    bounds: Option<Vec<(&'static DeviceRoof, Vec<f64>)>>,
}

impl Report<'_> {
    fn pairs_per_second(&self) -> f64 {
        self.args.steps_args.batch as f64 / self.timing.median()
    }

    fn achieved_flops(&self) -> f64 {
        self.timing.step_flops() / self.timing.median()
    }

    /// Model FLOPs utilisation against the dense bf16 tensor peak, on a GPU with a known one.
    fn mfu(&self) -> Option<f64> {
        (self.args.device == Device::Cuda)
            .then(|| roof_of(&self.device_name))
            .flatten()
            .map(|roof| self.achieved_flops() / roof.tensor_flops_per_second)
    }

    fn fusion(&self) -> String {
        self.args.variants().describe()
    }

    /// Whether the timed steps were launches of one captured graph.
    fn graph(&self) -> bool {
        self.args.device.is_gpu() && self.args.cuda_graph == Switch::On
    }

    /// The data the steps ran on, as `--data` names it.
    fn data_name(&self) -> &'static str {
        match self.args.data {
            Data::Shapes => "shapes",
            Data::Synthetic => "synthetic",
            Data::SyntheticFull => "synthetic-full",
        }
    }

    fn text(&self) -> String {
        let a = self.args;
        let s = &a.steps_args;
        let t = &self.timing;
        let f = t.flops;
        let steps = t.seconds.len() as f64;
        let mut out = format!(
            "bench step: preset {}, batch {}, {} on {} ({}), {}, {} data; steps: {} warm-up, {} timed{}\n",
            s.preset,
            s.batch,
            s.precision,
            a.device,
            self.device_name,
            self.fusion(),
            self.data_name(),
            a.warmup,
            a.steps,
            if self.graph() { ", each one launch of a captured graph on its own batch" } else { "" }
        );
        let (min, max) = t.seconds.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        out += &format!(
            "  step time         {:.2} ms median ({:.2} - {:.2})\n  pairs/s           {:.1}\n",
            t.median() * 1e3,
            min * 1e3,
            max * 1e3,
            self.pairs_per_second()
        );
        if a.device.is_gpu() {
            out += &format!(
                "  host issue time   {:.2} ms median (the host's part of the step before it waits for the loss)\n",
                median(&t.issue_seconds) * 1e3
            );
        }
        out += &format!(
            "  FLOPs per step    {:.3} GFLOP (3 x forward {:.3}: GEMM {:.3}, attention {:.3}, conv {:.3}, loss {:.3}; \
             counted from the ops' shapes)\n",
            t.step_flops() / 1e9,
            f.forward() / steps / 1e9,
            f.gemm / steps / 1e9,
            f.attention / steps / 1e9,
            f.conv / steps / 1e9,
            f.loss / steps / 1e9
        );
        out += &format!("  achieved          {:.2} GFLOP/s\n", self.achieved_flops() / 1e9);
        out += &match self.mfu() {
            Some(mfu) => format!("  MFU               {:.1}% of the dense bf16 tensor peak\n", 100.0 * mfu),
            None if a.device == Device::Emu => {
                "  MFU               - (emulator: see the modelled bounds below)\n".to_string()
            }
            None if a.device == Device::Cpu => "  MFU               - (MFU is against a GPU's peak)\n".to_string(),
            None => format!("  MFU               - (no known peak for {})\n", self.device_name),
        };
        if let Some(peak) = t.peak_bytes {
            out += &format!(
                "  device memory     {:.1} MB at the peak of a step ({:.1} MB more held by the caching allocator)\n",
                peak as f64 / 1e6,
                pool::cached_bytes(a.device) as f64 / 1e6
            );
        }
        if self.graph() {
            out += &format!("  graph captures    {} during the timed steps\n", t.recaptures);
        }
        if a.device.is_gpu() {
            let c = &t.counters;
            out += &format!(
                "  driver per step   {:.0} graph launches, {:.0} launches, {:.0} GEMMs, {:.1} host syncs (the loss read \
                 included), {:.1} allocations, {:.0} from the cache, {:.0} uploads\n",
                t.per_step(c.graph_launches),
                t.per_step(c.launches()),
                t.per_step(c.gemms()),
                t.per_step(c.host_syncs()),
                t.per_step(c.allocations.count),
                t.per_step(c.cached_allocations.count),
                t.per_step(c.uploads.count)
            );
        }
        out += &self.breakdown_text();
        out
    }

    fn breakdown_text(&self) -> String {
        let op = &self.op_times;
        let total = self.breakdown_seconds;
        let label = match self.args.device {
            Device::Cuda => "device time per call (one step, each call waited for)",
            Device::Emu => "emulator wall time (one step; says nothing about a GPU)",
            Device::Cpu => "wall time (one step)",
        };
        let mut out = format!("where the time goes: {label}\n");
        let bounds = self.bounds.as_deref().unwrap_or_default();
        out += &format!("  {:<12} {:>7} {:>11} {:>7}", "op", "calls", "ms", "share");
        for (roof, _) in bounds {
            out += &format!(" {:>12}", format!("{} bound us", roof.name));
        }
        out += "\n";
        for kind in OpKind::ALL {
            let seconds = op.seconds(kind);
            out += &format!(
                "  {:<12} {:>7} {:>11.3} {:>6.1}%",
                kind.name(),
                op.calls(kind),
                seconds * 1e3,
                100.0 * seconds / total.max(1e-12)
            );
            for (_, per_kind) in bounds {
                out += &format!(" {:>12.1}", per_kind[kind as usize] * 1e6);
            }
            out += "\n";
        }
        let other = (total - op.total_seconds()).max(0.0);
        out += &format!(
            "  {:<12} {:>7} {:>11.3} {:>6.1}%  (the tape, host work and the batch, outside any op)\n",
            "other",
            "",
            other * 1e3,
            100.0 * other / total.max(1e-12)
        );
        if !bounds.is_empty() {
            out += "  (bounds: modelled lower bounds from the emulator's profile at HBM and tensor peaks, not measurements)\n";
        }
        out
    }

    fn json(&self) -> Value {
        let a = self.args;
        let t = &self.timing;
        let f = t.flops;
        let steps = t.seconds.len() as f64;
        let c = &t.counters;
        let breakdown: Vec<Value> = OpKind::ALL
            .iter()
            .map(|&kind| {
                let mut row = json!({ "op": kind.name(), "calls": self.op_times.calls(kind),
                    "seconds": self.op_times.seconds(kind) });
                for (roof, per_kind) in self.bounds.as_deref().unwrap_or_default() {
                    row[format!("{}_bound_seconds", roof.name)] = json!(per_kind[kind as usize]);
                }
                row
            })
            .collect();
        json!({
            "preset": a.steps_args.preset,
            "batch": a.steps_args.batch,
            "precision": a.steps_args.precision.to_string(),
            "objectives": a.steps_args.loss.clone().unwrap_or_default(),
            "device": a.device.to_string(),
            "device_name": self.device_name,
            "fusion": self.fusion(),
            "unfused": a.unfused.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
            "kernels": a.kernel.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "warmup_steps": a.warmup,
            "step_seconds": t.seconds,
            "median_step_seconds": t.median(),
            "median_issue_seconds": median(&t.issue_seconds),
            "pairs_per_second": self.pairs_per_second(),
            "forward_flops_per_step": { "gemm": f.gemm / steps, "attention": f.attention / steps,
                "conv": f.conv / steps, "loss": f.loss / steps },
            "training_flops_per_step": t.step_flops(),
            "achieved_flops_per_second": self.achieved_flops(),
            "mfu": self.mfu(),
            "peak_device_bytes": t.peak_bytes,
            "cuda_graph": self.graph(),
            "graph_captures_timed": t.recaptures,
            "data": self.data_name(),
            "driver_per_step": a.device.is_gpu().then(|| json!({
                "graph_launches": t.per_step(c.graph_launches), "launches": t.per_step(c.launches()), "gemms": t.per_step(c.gemms()),
                "host_syncs": t.per_step(c.host_syncs()), "allocations": t.per_step(c.allocations.count),
                "cached_allocations": t.per_step(c.cached_allocations.count), "uploads": t.per_step(c.uploads.count),
            })),
            "breakdown": breakdown,
            "breakdown_step_seconds": self.breakdown_seconds,
        })
    }
}
