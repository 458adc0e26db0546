//! The losses of training steps, read back from the device in batches rather than one step at a
//! time: a step leaves its loss and gradient norm where it ran ([`StepOutput`]), the host queues
//! the next steps without waiting, and reads what is pending when the loop needs the numbers
//! (a log line, an evaluation, a checkpoint, the end). On the CPU there is nothing to wait for,
//! and the loop reads after every step.

use std::time::Instant;

use super::step::StepOutput;
use crate::error::{Error, Result};

/// One step whose numbers are still on the device.
struct Pending {
    /// 1-based: the step count once this step is done.
    step: u64,
    lr: f64,
    data_seconds: f64,
    output: StepOutput,
}

/// A step's numbers on the host.
pub struct ReadStep {
    /// 1-based: the step count once this step was done.
    pub step: u64,
    pub lr: f64,
    pub data_seconds: f64,
    pub loss: f64,
    pub grad_norm: f64,
    /// Each objective's value, with several.
    pub terms: Vec<(&'static str, f64)>,
}

pub struct Readback {
    pending: Vec<Pending>,
    /// When the previous read finished (or the loop started).
    since: Instant,
}

/// What one read returns: every pending step in order, and the wall time per step since the
/// previous read, which includes the device's work (the read waited for it).
pub struct ReadSteps {
    pub steps: Vec<ReadStep>,
    pub seconds_per_step: f64,
}

impl Readback {
    pub fn new() -> Self {
        Readback { pending: Vec::new(), since: Instant::now() }
    }

    pub fn push(&mut self, step: u64, lr: f64, data_seconds: f64, output: StepOutput) {
        self.pending.push(Pending { step, lr, data_seconds, output });
    }

    /// Reads every pending step (waiting for the device). A loss or gradient norm that is not
    /// finite is an error naming the first such step, followed by `on_stop` (where the run can
    /// be resumed from): that step's update was skipped, but the run stops rather than train
    /// on through a diverged loss.
    pub fn read(&mut self, on_stop: &str) -> Result<ReadSteps> {
        let pending = std::mem::take(&mut self.pending);
        let mut steps = Vec::with_capacity(pending.len());
        for p in &pending {
            let (loss, grad_norm) = (p.output.loss.item()?, p.output.grad_norm.item()?);
            if !loss.is_finite() || !grad_norm.is_finite() {
                let what = if loss.is_finite() {
                    format!("the gradient norm is {grad_norm}")
                } else {
                    format!("loss is {loss}")
                };
                return Err(Error::invalid(
                    "train",
                    format!("{what} at step {}, whose update was skipped; stopping. {on_stop}", p.step),
                ));
            }
            let terms = p.output.terms.iter().map(|(name, t)| Ok((*name, t.item()?))).collect::<Result<_>>()?;
            steps.push(ReadStep { step: p.step, lr: p.lr, data_seconds: p.data_seconds, loss, grad_norm, terms });
        }
        let seconds = self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        Ok(ReadSteps { seconds_per_step: seconds / pending.len().max(1) as f64, steps })
    }
}
