//! Data-parallel training: one process per GPU, each holding an equal share of the global
//! batch (issue 17). The ranks talk through a [`Collective`]; on GPUs that is NCCL, a
//! production collective library, never a home-made transport. The contrastive loss across
//! ranks ([`sharded_infonce`]) gathers the features and combines the column log-sum-exps so
//! that the loss and every gradient equal those of one process over the global batch.
//!
//! Gradients are summed across ranks, not averaged: each rank's backward yields its share of
//! the gradient of the GLOBAL loss (a mean over the global batch), and the shares add up.

mod contrastive;
mod nccl;
mod rendezvous;
mod side_stream;
mod watchdog;
mod world;

pub use contrastive::{Negatives, sharded_contrast, sharded_infonce};
pub use nccl::{NcclRanks, unique_id as nccl_unique_id};
pub use rendezvous::{Meeting, rendezvous};
pub use watchdog::{
    LossCause, PEER_LOST_EXIT, PeerLost, Peers, Progress, Settings as WatchdogSettings, Stall, Watchdog, end_process,
};
pub use world::WorldPlace;

use crate::error::Result;
use crate::tensor::Tensor;

/// The collective operations a data-parallel step needs. Every rank calls the same operations
/// in the same order with tensors of the same shape and dtype; each call returns when every
/// rank has made it. Reductions sum in rank order, so all ranks get the same bits.
pub trait Collective: Send + Sync {
    /// This process's index, 0-based.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Every rank's `x` concatenated along dimension 0, in rank order.
    fn all_gather(&self, x: &Tensor) -> Result<Tensor>;
    /// The element-wise sum of every rank's `x`.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// Starts [`Collective::all_reduce_sum`] of `x` and returns without waiting for it where
    /// the sum can run beside later work (NCCL on its own stream, after the work queued so
    /// far); [`PendingSum::finish`] gives the sum, ordering the work queued after it behind
    /// the collective. Ranks start and finish their sums in the same order. By default the sum
    /// is made at once.
    fn start_all_reduce_sum(&self, x: Tensor) -> Result<PendingSum> {
        Ok(PendingSum::done(self.all_reduce_sum(&x)?))
    }
    /// The element-wise sum of every rank's `x` ([world_size * m, ...]), of which this rank
    /// keeps rows `rank * m .. (rank + 1) * m`.
    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor>;
}

/// A sum across ranks started by [`Collective::start_all_reduce_sum`].
pub struct PendingSum(Box<dyn FnOnce() -> Result<Tensor>>);

impl PendingSum {
    /// A sum already made.
    pub fn done(sum: Tensor) -> Self {
        PendingSum(Box::new(move || Ok(sum)))
    }

    /// A sum that `finish` completes (it keeps the collective's input and output alive until
    /// then).
    pub fn later(finish: impl FnOnce() -> Result<Tensor> + 'static) -> Self {
        PendingSum(Box::new(finish))
    }

    /// The sum, for the work queued from now on.
    pub fn finish(self) -> Result<Tensor> {
        (self.0)()
    }
}

impl std::fmt::Debug for dyn Collective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.rank(), self.world_size())
    }
}
