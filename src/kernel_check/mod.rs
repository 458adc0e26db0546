//! Every kernel under the emulator's sanitizer (`msclip kernels --check`): a suite of cases that
//! together launch every kernel the engine uses, each run three times with a block's threads
//! resumed in forward, reverse and shuffled order (`emu::Schedule`). A case fails on a sanitizer
//! report (its launch fails with the report as the error) or when its outputs are not the same
//! bytes under all three orders, which reveals a race no report named.
//!
//! The cases are training steps of the tiny presets (steps.rs) and, for kernels no step
//! launches (evaluation-only kernels, tile shapes and head dims the tiny models do not use, the
//! sharded InfoNCE, mma.sync where the emulator would pick wgmma), backend ops called directly
//! on emulator tensors (ops.rs).

mod ops;
mod steps;

use std::time::{Duration, Instant};

use crate::backend::gpu::counters::{DriverCounters, measure};
use crate::backend::gpu::emu::{self, Instrumentation, Schedule};
use crate::backend::gpu::modules::MODULES;
use crate::error::Result;
use crate::tensor::Tensor;

/// A run's results by name, as raw bytes: what must not depend on the order threads run in.
pub type Outputs = Vec<(String, Vec<u8>)>;

/// The thread orders every case runs in; the shuffle's seed is fixed, so a failure repeats.
pub const SCHEDULES: [Schedule; 3] = [Schedule::Forward, Schedule::Reverse, Schedule::Shuffled(20_261_203)];

/// The modules only tests launch (kernels/selftest.cu proves the emulator, kernels/broken.cu
/// the sanitizer's reports): no case covers them.
pub const TEST_ONLY_MODULES: [&str; 2] = ["selftest", "broken"];

/// One case of the suite: a name and work that launches kernels on the emulator and returns its
/// outputs. It makes its own inputs, so each run allocates and writes them under the sanitizer.
pub struct Case {
    pub name: String,
    run: Box<dyn Fn() -> Result<Outputs> + Send + Sync>,
}

impl Case {
    pub fn new(name: impl Into<String>, run: impl Fn() -> Result<Outputs> + Send + Sync + 'static) -> Self {
        Case { name: name.into(), run: Box::new(run) }
    }

    /// Runs the case once, its launches in this thread's emulator mode.
    pub fn run(&self) -> Result<Outputs> {
        (self.run)()
    }
}

/// The whole suite: the training steps first, then the op-level cases.
pub fn suite() -> Vec<Case> {
    steps::cases().into_iter().chain(ops::cases()).collect()
}

/// What checking one case found.
pub struct CaseReport {
    pub name: String,
    /// The driver calls of its first run (each run makes the same).
    pub counts: DriverCounters,
    /// Wall time of all its runs.
    pub wall: Duration,
    /// Why it failed: the schedule and the sanitizer report (or other error) of a run, or the
    /// first output that differs between two schedules.
    pub failure: Option<String>,
}

/// Runs `case` under the sanitizer once per schedule of [`SCHEDULES`], stopping at the first
/// failure.
pub fn check(case: &Case) -> CaseReport {
    let start = Instant::now();
    let mut counts = DriverCounters::new();
    let failure = check_schedules(case, &mut counts).err();
    CaseReport { name: case.name.clone(), counts, wall: start.elapsed(), failure }
}

fn check_schedules(case: &Case, counts: &mut DriverCounters) -> std::result::Result<(), String> {
    let mut reference: Option<(Schedule, Outputs)> = None;
    for schedule in SCHEDULES {
        let (outputs, calls) = emu::instrument(Instrumentation::Sanitizer, schedule, || measure(|| case.run()));
        if reference.is_none() {
            *counts = calls;
        }
        let outputs = outputs.map_err(|e| format!("{schedule:?} schedule: {e}"))?;
        match &reference {
            None => reference = Some((schedule, outputs)),
            Some((first, expected)) => {
                if let Some(difference) = first_difference(expected, &outputs) {
                    return Err(format!("{first:?} and {schedule:?} schedules differ: {difference}"));
                }
            }
        }
    }
    Ok(())
}

/// The first output of `b` that is not the same bytes as `a`'s, described; `None` when they are
/// identical, names and order included.
pub fn first_difference(a: &Outputs, b: &Outputs) -> Option<String> {
    for (i, ((name_a, bytes_a), (name_b, bytes_b))) in a.iter().zip(b).enumerate() {
        if name_a != name_b {
            return Some(format!("output {i} is {name_a} in one run and {name_b} in the other"));
        }
        if bytes_a.len() != bytes_b.len() {
            return Some(format!("{name_a} has {} bytes in one run and {} in the other", bytes_a.len(), bytes_b.len()));
        }
        if let Some(at) = bytes_a.iter().zip(bytes_b).position(|(x, y)| x != y) {
            return Some(format!("{name_a} differs from byte {at} of {}", bytes_a.len()));
        }
    }
    (a.len() != b.len()).then(|| format!("{} outputs in one run and {} in the other", a.len(), b.len()))
}

/// The kernels of every module but the test-only ones that none of `reports` launched, in
/// module order.
pub fn uncovered(reports: &[CaseReport]) -> Vec<&'static str> {
    MODULES
        .iter()
        .filter(|m| !TEST_ONLY_MODULES.contains(&m.name))
        .flat_map(|m| m.kernels.iter().copied())
        .filter(|&kernel| !reports.iter().any(|r| r.counts.launches_by_kernel.contains_key(kernel)))
        .collect()
}

/// A tensor as a named output: its bytes, copied back to the host.
fn output(name: impl Into<String>, t: &Tensor) -> Result<(String, Vec<u8>)> {
    Ok((name.into(), t.host_storage()?.as_bytes().to_vec()))
}
