//! Element-wise ops and dtype casts.

use rayon::prelude::*;

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::{CpuStorage, DType, Real, Storage, Tensor};

/// Inputs below this many elements run on the calling thread: spawning costs more.
const PARALLEL_MIN: usize = 1 << 14;

pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let Storage::Cpu(src) = x.storage();
    let converted = match (src, dtype) {
        (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(v.iter().map(|&f| half::bf16::from_f32(f)).collect()),
        _ => CpuStorage::from_f64_slice(dtype, &src.to_f64_vec()),
    };
    Tensor::from_storage(Storage::Cpu(converted), x.shape().clone())
}

/// Applies `f(index, &mut out)` to every output element, in parallel for large outputs.
fn fill<T: Real>(len: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    if len >= PARALLEL_MIN {
        out.par_iter_mut().enumerate().for_each(|(i, o)| *o = f(i));
    } else {
        out.iter_mut().enumerate().for_each(|(i, o)| *o = f(i));
    }
    out
}

pub fn binary<T: Real>(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a_s, b_s) = (a.cpu_slice::<T>()?, b.cpu_slice::<T>()?);
    let period = b_s.len().max(1);
    let out = fill(a_s.len(), |i| {
        let (x, y) = (a_s[i], b_s[i % period]);
        match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
        }
    });
    Tensor::from_vec(out, a.shape().clone())
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

const QUICK_GELU_ALPHA: f64 = 1.702;

pub fn unary<T: Real>(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let alpha = T::of(QUICK_GELU_ALPHA);
    let out = fill(xs.len(), |i| {
        let v = xs[i];
        match op {
            UnaryOp::Exp => v.exp(),
            UnaryOp::Ln => v.ln(),
            UnaryOp::Relu => v.max(T::zero()),
            UnaryOp::QuickGelu => v * sigmoid(alpha * v),
            UnaryOp::Scale(c) => v * T::of(c),
        }
    });
    Tensor::from_vec(out, x.shape().clone())
}

pub fn unary_backward<T: Real>(op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (xs, ys, dys) = (x.cpu_slice::<T>()?, y.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let alpha = T::of(QUICK_GELU_ALPHA);
    let out = fill(xs.len(), |i| {
        let (v, g) = (xs[i], dys[i]);
        match op {
            UnaryOp::Exp => g * ys[i],
            UnaryOp::Ln => g / v,
            UnaryOp::Relu => {
                if v > T::zero() {
                    g
                } else {
                    T::zero()
                }
            }
            UnaryOp::QuickGelu => {
                let s = sigmoid(alpha * v);
                g * (s + alpha * v * s * (T::one() - s))
            }
            UnaryOp::Scale(c) => g * T::of(c),
        }
    });
    Tensor::from_vec(out, x.shape().clone())
}
