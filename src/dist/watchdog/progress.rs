//! How far a rank's training has got: its main thread reports each step, its watchdog reads
//! the count (cheaply, with no lock) to send with every heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A rank's progress, shared by its training loop (which reports) and its watchdog (which
/// reads). Clones share one count.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    steps: AtomicU64,
    finished: AtomicBool,
}

impl Progress {
    /// The run has done `step` steps (the run's step, so a resumed run goes on from its own).
    pub fn reached(&self, step: u64) {
        self.0.steps.store(step, Ordering::Relaxed);
    }

    /// This rank's training loop is over: no collective of a step follows, only the end of the
    /// run (on rank 0 the final evaluation, which the other ranks wait for).
    pub fn finished(&self) {
        self.0.finished.store(true, Ordering::Relaxed);
    }

    /// The last step reported; 0 before the first.
    pub fn steps(&self) -> u64 {
        self.0.steps.load(Ordering::Relaxed)
    }

    /// Whether [`Progress::finished`] was called.
    pub fn is_finished(&self) -> bool {
        self.0.finished.load(Ordering::Relaxed)
    }
}
