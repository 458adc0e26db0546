//! What a training step adds as one rank of a data-parallel world (issue 17): the losses are
//! shares of the global batch's (their contrasts span every rank's pairs, through
//! [`crate::dist::Negatives::AcrossRanks`]), so each parameter's gradient is summed across
//! ranks before the update, and clipping and AdamW see the gradient of the global loss on
//! every rank: every rank's parameters stay equal. BatchNorm statistics stay per rank, as in
//! PyTorch's DDP without SyncBatchNorm.

use std::collections::HashMap;

use crate::autograd::{self, Gradients};
use crate::dist::{Collective, PendingSum};
use crate::error::Result;
use crate::nn::{ComputeCopies, ParamStore};
use crate::ops;
use crate::tensor::{Tensor, TensorId};

/// The global batch's loss and objective values from this rank's shares (each [1], detached):
/// one collective for all of them.
pub fn sum_losses(
    loss: &Tensor,
    terms: Vec<(&'static str, Tensor)>,
    ranks: &dyn Collective,
) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
    let shares: Vec<&Tensor> = std::iter::once(loss).chain(terms.iter().map(|(_, t)| t)).collect();
    let summed = ranks.all_reduce_sum(&ops::concat(&shares, 0)?)?;
    let terms = terms
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Ok((*name, summed.slice(0, i + 1, 1)?)))
        .collect::<Result<_>>()?;
    Ok((summed.slice(0, 0, 1)?, terms))
}

/// Gradients are summed in buckets of at most this many bytes, PyTorch DDP's default
/// (`bucket_cap_mb=25`): one collective per bucket instead of one per parameter (B/32 has
/// about 300 tensors, each call a launch and a handshake between ranks).
pub const BUCKET_BYTES: usize = 25 << 20;

/// The backward of this rank's `loss`, with every parameter's gradient summed across ranks.
/// The gradients are grouped into buckets of at most `bucket_bytes` of one dtype (a larger
/// tensor alone) in the reverse of the store's order, roughly the order in which the backward
/// finishes them (as DDP assigns its buckets). A bucket's sum starts as soon as its last
/// gradient is final, while the rest of the backward runs (on a GPU, on NCCL's own stream);
/// buckets start in order, so every rank starts the same collectives in the same order. A
/// bucket with a parameter the loss never takes starts after the backward. The gradient sits
/// on the compute copy where there is one, as the optimizer looks it up.
pub fn backward_summed(
    loss: &Tensor,
    params: &ParamStore,
    copies: Option<&ComputeCopies>,
    ranks: &dyn Collective,
    bucket_bytes: usize,
) -> Result<Gradients> {
    let mut buckets = Buckets::plan(params, copies, bucket_bytes);
    let watched: Vec<TensorId> = buckets.members.iter().flatten().map(Tensor::id).collect();
    let mut grads = autograd::backward_watching(loss, &watched, |grads, id| buckets.ready(id, grads, ranks))?;
    buckets.finish(&mut grads, ranks)?;
    Ok(grads)
}

/// The buckets of one step's gradient sums and how far they have come.
struct Buckets {
    /// Each bucket's tensors (parameters, or their compute copies), in their flat order.
    members: Vec<Vec<Tensor>>,
    bucket_of: HashMap<TensorId, usize>,
    /// How many of each bucket's gradients are not final yet.
    waiting: Vec<usize>,
    /// The sums started so far, one per bucket, in bucket order.
    started: Vec<StartedSum>,
}

/// A bucket's sum under way: the tensors whose gradients it holds, end to end.
struct StartedSum {
    owners: Vec<Tensor>,
    sum: Option<PendingSum>,
}

impl Buckets {
    fn plan(params: &ParamStore, copies: Option<&ComputeCopies>, bucket_bytes: usize) -> Buckets {
        let mut members: Vec<Vec<Tensor>> = Vec::new();
        let mut bytes = 0;
        for id in params.ids().collect::<Vec<_>>().into_iter().rev() {
            let used = copies.and_then(|c| c.get(id)).unwrap_or(params.get(id)).clone();
            let size = used.numel() * used.dtype().size_in_bytes();
            let fits = members.last().is_some_and(|b| b[0].dtype() == used.dtype() && bytes + size <= bucket_bytes);
            if !fits {
                members.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            members.last_mut().expect("a bucket was just pushed").push(used);
        }
        let bucket_of = members.iter().enumerate().flat_map(|(b, m)| m.iter().map(move |t| (t.id(), b))).collect();
        let waiting = members.iter().map(Vec::len).collect();
        Buckets { members, bucket_of, waiting, started: Vec::new() }
    }

    /// `id`'s gradient is final: starts every bucket, in order, that waits for nothing more.
    fn ready(&mut self, id: TensorId, grads: &Gradients, ranks: &dyn Collective) -> Result<()> {
        if let Some(&b) = self.bucket_of.get(&id) {
            self.waiting[b] -= 1;
        }
        while self.started.len() < self.members.len() && self.waiting[self.started.len()] == 0 {
            self.start_next(grads, ranks)?;
        }
        Ok(())
    }

    /// Starts the next bucket's sum: its gradients flattened into one tensor, one collective.
    /// Same model, same objectives: a parameter has a gradient on every rank or on none, so
    /// every rank skips the same empty buckets.
    fn start_next(&mut self, grads: &Gradients, ranks: &dyn Collective) -> Result<()> {
        let owners: Vec<Tensor> =
            self.members[self.started.len()].iter().filter(|t| grads.get(t).is_some()).cloned().collect();
        let sum = match owners.is_empty() {
            true => None,
            false => {
                let flat: Vec<Tensor> = owners
                    .iter()
                    .map(|t| grads.get(t).expect("filtered").reshape([t.numel()]))
                    .collect::<Result<_>>()?;
                Some(ranks.start_all_reduce_sum(ops::concat(&flat.iter().collect::<Vec<_>>(), 0)?)?)
            }
        };
        self.started.push(StartedSum { owners, sum });
        Ok(())
    }

    /// Starts the buckets the backward left (a parameter it never reached), then puts every
    /// bucket's sum back into the gradients, cut to their shapes.
    fn finish(mut self, grads: &mut Gradients, ranks: &dyn Collective) -> Result<()> {
        while self.started.len() < self.members.len() {
            self.start_next(grads, ranks)?;
        }
        for StartedSum { owners, sum } in self.started {
            let Some(sum) = sum else { continue };
            let summed = sum.finish()?;
            let mut offset = 0;
            for owner in owners {
                grads.set(&owner, summed.slice(0, offset, owner.numel())?.reshape(owner.shape().clone())?);
                offset += owner.numel();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::autograd::record1;
    use crate::tensor::{DType, Rng};

    /// One rank standing for two equal ones: every sum is twice the input. It logs when each
    /// sum starts and finishes, by its length, into the log the test reads.
    struct Doubling(Arc<Mutex<Vec<String>>>);

    impl Collective for Doubling {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
            ops::concat(&[x, x], 0)
        }
        fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
            x.scale(2.0)
        }
        fn start_all_reduce_sum(&self, x: Tensor) -> Result<PendingSum> {
            self.0.lock().unwrap().push(format!("start {}", x.numel()));
            let log = Arc::clone(&self.0);
            Ok(PendingSum::later(move || {
                log.lock().unwrap().push(format!("finish {}", x.numel()));
                x.scale(2.0)
            }))
        }
        fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
            x.slice(0, 0, x.dims()[0] / 2)?.scale(2.0)
        }
    }

    #[test]
    fn bucket_sums_start_during_the_backward_in_order_and_are_cut_back_to_shape() {
        let mut rng = Rng::new(1);
        let mut params = ParamStore::new();
        let shapes: [&[usize]; 5] = [&[3, 4], &[5], &[40], &[2, 2, 2], &[1]];
        for (i, shape) in shapes.iter().enumerate() {
            // The last one in f64: a bucket never mixes dtypes.
            let dtype = if i == 4 { DType::F64 } else { DType::F32 };
            params.add(format!("p{i}"), rng.normal_tensor(shape.to_vec(), 1.0, dtype).set_requires_grad(true)).unwrap();
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = |i: usize| params.get(crate::nn::ParamId::from_index(i)).clone();
        // p0 is taken first (through an op that logs its backward, the last to run), p1 never;
        // p2, p3 and p4 later, so their gradients are final before p0's.
        let loss = || -> Result<Tensor> {
            let marker_log = Arc::clone(&log);
            let marked = record1("marker", &[&p(0)], p(0).detach(), move |dy, _| {
                marker_log.lock().unwrap().push("backward reaches p0".into());
                Ok(vec![Some(dy.clone())])
            });
            let f32_part = marked.sum_all()?.add(&p(2).mul(&p(2))?.sum_all()?)?.add(&p(3).exp()?.sum_all()?)?;
            f32_part.to_dtype(DType::F64)?.add(&p(4).sum_all()?)
        };
        let plain = autograd::backward(&loss().unwrap()).unwrap();
        log.lock().unwrap().clear();
        // 64 bytes a bucket, from the last parameter back: [p4] (f64), [p3] (32 bytes), [p2]
        // (160, alone), [p1] (no gradient: skipped), [p0] (48).
        let ranks = Doubling(Arc::clone(&log));
        let summed = backward_summed(&loss().unwrap(), &params, None, &ranks, 64).unwrap();
        let expected = [
            "start 1",
            "start 8",
            "start 40",
            "backward reaches p0",
            // Bucket [p1] waited for a gradient that never came, and p0's bucket behind it.
            "start 12",
            "finish 1",
            "finish 8",
            "finish 40",
            "finish 12",
        ];
        assert_eq!(*log.lock().unwrap(), expected);
        for i in [0, 2, 3, 4] {
            let want: Vec<f64> = plain.get(&p(i)).unwrap().to_f64_vec().iter().map(|v| 2.0 * v).collect();
            let got = summed.get(&p(i)).unwrap();
            assert_eq!((got.dims(), got.to_f64_vec()), (p(i).dims(), want), "p{i}");
        }
        assert!(summed.get(&p(1)).is_none());
        // One bucket for all the f32 ones when they fit.
        log.lock().unwrap().clear();
        backward_summed(&loss().unwrap(), &params, None, &ranks, BUCKET_BYTES).unwrap();
        assert_eq!(log.lock().unwrap().iter().filter(|l| l.starts_with("start")).count(), 2);
    }
}
