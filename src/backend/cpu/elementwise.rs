//! Element-wise ops and dtype casts.

use rayon::prelude::*;

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::{CpuStorage, DType, Real, Storage, Tensor};

/// Inputs below this many elements run on the calling thread: spawning costs more.
const PARALLEL_MIN: usize = 1 << 14;

pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let Storage::Cpu(src) = x.storage() else {
        return Err(crate::error::Error::Device(format!("cast on the CPU backend of {x:?}")));
    };
    let converted = match (src, dtype) {
        (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(v.iter().map(|&f| half::bf16::from_f32(f)).collect()),
        _ => CpuStorage::from_f64_slice(dtype, &src.to_f64_vec()),
    };
    Tensor::from_storage(Storage::Cpu(converted), x.shape().clone())
}

/// Elements per parallel task: large enough to amortise scheduling, small enough to split
/// a layer's activations across the threads.
const CHUNK: usize = 1 << 13;

/// `out[i] = f(i)`, in parallel chunks for large outputs.
fn fill<T: Real>(len: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    let run = |(c, chunk): (usize, &mut [T])| chunk.iter_mut().enumerate().for_each(|(i, o)| *o = f(c * CHUNK + i));
    if len >= PARALLEL_MIN {
        out.par_chunks_mut(CHUNK).enumerate().for_each(run);
    } else {
        out.chunks_mut(CHUNK).enumerate().for_each(run);
    }
    out
}

/// `out[i] = f(x[i])`, one monomorphised loop per op so each can vectorise.
fn map<T: Real>(xs: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    fill(xs.len(), |i| f(xs[i]))
}

/// `out[i] = f(x[i], y[i], dy[i])`.
fn map3<T: Real>(xs: &[T], ys: &[T], dys: &[T], f: impl Fn(T, T, T) -> T + Sync) -> Vec<T> {
    fill(xs.len(), |i| f(xs[i], ys[i], dys[i]))
}

pub fn binary<T: Real>(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a_s, b_s) = (a.cpu_slice::<T>()?, b.cpu_slice::<T>()?);
    let period = b_s.len().max(1);
    let out = match op {
        BinaryOp::Add => fill(a_s.len(), |i| a_s[i] + b_s[i % period]),
        BinaryOp::Sub => fill(a_s.len(), |i| a_s[i] - b_s[i % period]),
        BinaryOp::Mul => fill(a_s.len(), |i| a_s[i] * b_s[i % period]),
    };
    Tensor::from_vec(out, a.shape().clone())
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

const QUICK_GELU_ALPHA: f64 = 1.702;

pub fn unary<T: Real>(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let alpha = T::of(QUICK_GELU_ALPHA);
    let out = match op {
        UnaryOp::Exp => map(xs, |v| v.exp()),
        UnaryOp::Ln => map(xs, |v| v.ln()),
        UnaryOp::Relu => map(xs, |v| v.max(T::zero())),
        UnaryOp::QuickGelu => map(xs, |v| v * sigmoid(alpha * v)),
        UnaryOp::Scale(c) => map(xs, |v| v * T::of(c)),
    };
    Tensor::from_vec(out, x.shape().clone())
}

pub fn unary_backward<T: Real>(op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (xs, ys, dys) = (x.cpu_slice::<T>()?, y.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let alpha = T::of(QUICK_GELU_ALPHA);
    let out = match op {
        UnaryOp::Exp => map3(xs, ys, dys, |_, y, g| g * y),
        UnaryOp::Ln => map3(xs, ys, dys, |x, _, g| g / x),
        UnaryOp::Relu => map3(xs, ys, dys, |x, _, g| if x > T::zero() { g } else { T::zero() }),
        UnaryOp::QuickGelu => map3(xs, ys, dys, |x, _, g| {
            let s = sigmoid(alpha * x);
            g * (s + alpha * x * s * (T::one() - s))
        }),
        UnaryOp::Scale(c) => map3(xs, ys, dys, |_, _, g| g * T::of(c)),
    };
    Tensor::from_vec(out, x.shape().clone())
}
