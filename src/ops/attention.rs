//! Multi-head self-attention on packed QKV projections.

use super::flops;
use super::fusion::{self, Fusion};
use super::{be, check_rank};
use crate::autograd::record1;
use crate::backend::AttnMask;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `softmax(q k^T / sqrt(head_dim) + mask) v` per head. `qkv` is [batch, len, 3*width] with
/// the q, k and v blocks in that order (the layout of nn.MultiheadAttention's in_proj);
/// returns [batch, len, width] with the heads concatenated. With `mask.sequence_offsets`, batch
/// is 1 and the len tokens are sequences back to back, each attending within itself.
pub fn attention(qkv: &Tensor, heads: usize, mask: &AttnMask) -> Result<Tensor> {
    const OP: &str = "attention";
    check_rank(OP, "qkv", qkv, &[3])?;
    let (batch, len, packed) = (qkv.dims()[0], qkv.dims()[1], qkv.dims()[2]);
    if heads == 0 || packed % (3 * heads) != 0 {
        return Err(Error::shape(OP, format!("qkv {} cannot split into q, k, v of {heads} heads", qkv.shape())));
    }
    mask.check(OP, batch, len)?;
    flops::attention(batch, len, packed / 3, mask);
    if fusion::is_off(Fusion::Attention) {
        return flops::uncounted(|| super::unfused::attention(qkv, heads, mask));
    }
    let (out, lse) = be(qkv).attention(qkv, heads, mask)?;
    let (x, o, mask) = (qkv.clone(), out.clone(), mask.clone());
    Ok(record1(OP, &[qkv], out, move |dy, _| {
        Ok(vec![Some(be(dy).attention_backward(&x, &o, &lse, dy, heads, &mask)?)])
    }))
}
