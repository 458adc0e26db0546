//! What a training step adds as one rank of a data-parallel world (issue 17): the losses are
//! shares of the global batch's (their contrasts span every rank's pairs, through
//! [`crate::dist::Negatives::AcrossRanks`]), so each parameter's gradient is summed across
//! ranks before the update, and clipping and AdamW see the gradient of the global loss on
//! every rank: every rank's parameters stay equal. BatchNorm statistics stay per rank, as in
//! PyTorch's DDP without SyncBatchNorm.

use crate::autograd::Gradients;
use crate::dist::Collective;
use crate::error::Result;
use crate::nn::{ComputeCopies, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

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

/// Replaces each parameter's gradient in `grads` by its sum over the ranks. Consecutive
/// gradients of one dtype go into one flat bucket of at most `bucket_bytes` (a larger tensor
/// alone), summed by one collective and cut back into the gradients, in the store's order (the
/// same on every rank). The gradient sits on the compute copy where there is one, as the
/// optimizer looks it up.
pub fn sum_gradients(
    params: &ParamStore,
    copies: Option<&ComputeCopies>,
    grads: &mut Gradients,
    ranks: &dyn Collective,
    bucket_bytes: usize,
) -> Result<()> {
    // Same model, same objectives: a parameter has a gradient on every rank or on none.
    let mut owners: Vec<Tensor> = Vec::new();
    let mut bucket: Vec<Tensor> = Vec::new();
    let mut bytes = 0;
    for id in params.ids() {
        let used = copies.and_then(|c| c.get(id)).unwrap_or(params.get(id));
        let Some(grad) = grads.get(used).cloned() else { continue };
        let size = grad.numel() * grad.dtype().size_in_bytes();
        let fits = bucket.first().is_none_or(|b| b.dtype() == grad.dtype()) && bytes + size <= bucket_bytes;
        if !bucket.is_empty() && !fits {
            sum_bucket(&owners, &bucket, grads, ranks)?;
            (owners, bucket, bytes) = (Vec::new(), Vec::new(), 0);
        }
        owners.push(used.clone());
        bucket.push(grad);
        bytes += size;
    }
    if !bucket.is_empty() {
        sum_bucket(&owners, &bucket, grads, ranks)?;
    }
    Ok(())
}

/// Sums one bucket of gradients (of `owners`) across ranks: flattened into one tensor, one
/// collective, cut back.
fn sum_bucket(owners: &[Tensor], bucket: &[Tensor], grads: &mut Gradients, ranks: &dyn Collective) -> Result<()> {
    let flat: Vec<Tensor> = bucket.iter().map(|g| g.reshape([g.numel()])).collect::<Result<_>>()?;
    let summed = ranks.all_reduce_sum(&ops::concat(&flat.iter().collect::<Vec<_>>(), 0)?)?;
    let mut offset = 0;
    for (owner, grad) in owners.iter().zip(bucket) {
        grads.set(owner, summed.slice(0, offset, grad.numel())?.reshape(grad.shape().clone())?);
        offset += grad.numel();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamId;
    use crate::tensor::{DType, Rng};

    /// One rank standing for two equal ones: every sum is twice the input, and it counts calls.
    struct Doubling(std::sync::atomic::AtomicUsize);

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
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            x.scale(2.0)
        }
        fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
            x.slice(0, 0, x.dims()[0] / 2)?.scale(2.0)
        }
    }

    #[test]
    fn gradients_are_summed_in_buckets_of_one_dtype_and_cut_back_to_shape() {
        let mut rng = Rng::new(1);
        let mut params = ParamStore::new();
        let shapes: [&[usize]; 5] = [&[3, 4], &[5], &[40], &[2, 2, 2], &[1]];
        for (i, shape) in shapes.iter().enumerate() {
            // The last one in f64: a bucket never mixes dtypes.
            let dtype = if i == 4 { DType::F64 } else { DType::F32 };
            params.add(format!("p{i}"), rng.normal_tensor(shape.to_vec(), 1.0, dtype).set_requires_grad(true)).unwrap();
        }
        let mut grads = Gradients::default();
        let mut before = Vec::new();
        for (i, id) in params.ids().enumerate() {
            // p1 has no gradient (a parameter the loss does not reach).
            if i != 1 {
                let g = rng.normal_tensor(params.get(id).dims().to_vec(), 1.0, params.get(id).dtype());
                before.push((id, g.to_f64_vec()));
                grads.set(params.get(id), g);
            }
        }
        // 64 bytes a bucket: p0 (48 bytes) alone, p2 (160) alone, p3 (32) alone, p4 (f64) alone.
        let ranks = Doubling(Default::default());
        sum_gradients(&params, None, &mut grads, &ranks, 64).unwrap();
        assert_eq!(ranks.0.load(std::sync::atomic::Ordering::SeqCst), 4);
        for (id, values) in &before {
            let got = grads.get(params.get(*id)).unwrap();
            assert_eq!(got.dims(), params.get(*id).dims());
            assert_eq!(got.to_f64_vec(), values.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        }
        assert!(grads.get(params.get(ParamId::from_index(1))).is_none());
        // One bucket for all the f32 ones when they fit.
        let ranks = Doubling(Default::default());
        sum_gradients(&params, None, &mut grads, &ranks, BUCKET_BYTES).unwrap();
        assert_eq!(ranks.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
