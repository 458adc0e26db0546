//! Differentiable ops on [`Tensor`]: the API model code is written against.
//!
//! Each op checks its operands (shape, dtype, device, index range) and fails with an error
//! that names the op and the shapes, then computes its value on the tensor's backend and
//! records a backward closure on the tape. Nothing broadcasts implicitly: ops that repeat
//! an operand say so in their name (`add_broadcast`).

mod attention;
mod conv;
mod elementwise;
pub mod flops;
pub mod fusion;
mod layout;
mod loss;
mod matmul;
mod norm;
mod reduce;
mod unfused;

pub use attention::attention;
pub use conv::conv2d;
pub use layout::concat;
pub use loss::{IGNORE_TARGET, contrast, cross_entropy, infonce};
pub use norm::{BatchNormMode, batch_norm_relu2d, batch_norm2d};

use crate::backend::{self, Backend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The backend of the tensor's device.
fn be(t: &Tensor) -> &'static dyn Backend {
    backend::get(t.device())
}

/// All operands share dtype and device with the first.
fn check_same_kind(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    let first = tensors[0];
    for t in &tensors[1..] {
        if t.dtype() != first.dtype() {
            return Err(Error::dtype(op, format!("{} vs {}", first.dtype(), t.dtype())));
        }
        if t.device() != first.device() {
            return Err(Error::invalid(op, format!("operands on {} and {}", first.device(), t.device())));
        }
    }
    Ok(())
}

fn check_rank(op: &'static str, what: &str, t: &Tensor, ranks: &[usize]) -> Result<()> {
    if ranks.contains(&t.rank()) {
        Ok(())
    } else {
        Err(Error::shape(op, format!("{what} must have rank {ranks:?}, shape is {}", t.shape())))
    }
}

fn check_dim(op: &'static str, t: &Tensor, dim: usize) -> Result<()> {
    if dim < t.rank() {
        Ok(())
    } else {
        Err(Error::shape(op, format!("dimension {dim} out of range for shape {}", t.shape())))
    }
}

fn check_ids(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= rows) {
        Some(j) => Err(Error::index(op, format!("index {} at position {j}, valid range is 0..{rows}", ids[j]))),
        None => Ok(()),
    }
}
