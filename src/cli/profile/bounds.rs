//! The modelled lower bound of counted steps on each GPU with a roof: their kernels' bounds
//! (from the emulator's profiles) plus their GEMMs' (from the shapes). Never a measurement.

use msclip::backend::gpu::GemmSpec;
use msclip::backend::gpu::kernel_stats::{Grouping, KernelStats, gemm_bound, gemm_work};
use msclip::backend::gpu::roofline::{DEVICE_ROOFS, DeviceRoof};
use serde_json::{Value, json};

use super::steps::CountedSteps;

/// One device's bound of the counted steps, per step, in seconds.
pub struct StepBound {
    pub roof: &'static DeviceRoof,
    /// None when the launches were not profiled (a real GPU's run).
    pub kernels: Option<f64>,
    pub gemms: f64,
}

impl StepBound {
    pub fn total(&self) -> Option<f64> {
        self.kernels.map(|k| k + self.gemms)
    }
}

/// The bound of one step (the mean of the counted ones) on every roof.
pub fn step_bounds(counted: &CountedSteps, steps: u64) -> Vec<StepBound> {
    let rows = KernelStats::group(&counted.profiles, Grouping::KernelAndShape);
    let profiled = !counted.profiles.is_empty() || counted.counters.launches() == 0;
    DEVICE_ROOFS
        .iter()
        .map(|roof| {
            let kernels = rows.iter().map(|r| r.bound(roof).seconds).sum::<f64>() / steps as f64;
            let gemms =
                counted.counters.gemms_by_spec.iter().map(|(spec, &calls)| gemm_bound(spec, calls, roof).seconds);
            StepBound { roof, kernels: profiled.then_some(kernels), gemms: gemms.sum::<f64>() / steps as f64 }
        })
        .collect()
}

fn micros(seconds: f64) -> String {
    format!("{:.1} us", seconds * 1e6)
}

/// The bounds as table lines.
pub fn bounds_table(bounds: &[StepBound]) -> String {
    let mut out = "modelled lower bound per step (HBM and bf16 tensor peaks; not a measurement)\n".to_string();
    for b in bounds {
        let kernels = b.kernels.map_or("not profiled (emu only)".to_string(), micros);
        let total = b.total().map(|t| format!(" = {}", micros(t))).unwrap_or_default();
        out += &format!("  {:<9} kernels {kernels} + GEMMs {}{total}\n", b.roof.name, micros(b.gemms));
    }
    out
}

/// `{device: seconds}` for every roof.
pub fn seconds_by_device(seconds: impl Fn(&DeviceRoof) -> f64) -> Value {
    DEVICE_ROOFS
        .iter()
        .map(|roof| (roof.name.to_string(), json!(seconds(roof))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The GEMM calls of one shape: the shape, the calls, their least work and bound on every roof.
pub fn gemm_json(spec: &GemmSpec, calls: u64) -> Value {
    let (bytes, flops) = gemm_work(spec);
    json!({
        "dtype": spec.dtype.name(), "batch": spec.batch, "m": spec.m, "n": spec.n, "k": spec.k,
        "trans_a": spec.trans_a, "trans_b": spec.trans_b, "batch_strides": spec.batch_strides, "calls": calls,
        "flops": flops * calls, "minimum_bytes": bytes * calls,
        "bound_seconds": seconds_by_device(|roof| gemm_bound(spec, calls, roof).seconds),
    })
}

pub fn bounds_json(bounds: &[StepBound]) -> Value {
    bounds
        .iter()
        .map(|b| {
            json!({ "device": b.roof.name, "kernels_seconds": b.kernels, "gemms_seconds": b.gemms,
                "total_seconds": b.total() })
        })
        .collect()
}
