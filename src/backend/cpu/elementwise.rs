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

fn quick_gelu<T: Real>(v: T) -> T {
    v * sigmoid(T::of(QUICK_GELU_ALPHA) * v)
}

/// d/dv of v * sigmoid(a v) = s + a v s (1 - s).
fn quick_gelu_grad<T: Real>(v: T) -> T {
    let alpha = T::of(QUICK_GELU_ALPHA);
    let s = sigmoid(alpha * v);
    s + alpha * v * s * (T::one() - s)
}

pub fn unary<T: Real>(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let out = match op {
        UnaryOp::Exp => map(xs, |v| v.exp()),
        UnaryOp::Ln => map(xs, |v| v.ln()),
        UnaryOp::Relu => map(xs, |v| v.max(T::zero())),
        UnaryOp::QuickGelu => map(xs, quick_gelu),
        UnaryOp::Scale(c) => map(xs, |v| v * T::of(c)),
    };
    Tensor::from_vec(out, x.shape().clone())
}

pub fn unary_backward<T: Real>(op: UnaryOp, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (xs, ys, dys) = (x.cpu_slice::<T>()?, y.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let out = match op {
        UnaryOp::Exp => map3(xs, ys, dys, |_, y, g| g * y),
        UnaryOp::Ln => map3(xs, ys, dys, |x, _, g| g / x),
        UnaryOp::Relu => map3(xs, ys, dys, |x, _, g| if x > T::zero() { g } else { T::zero() }),
        UnaryOp::QuickGelu => map3(xs, ys, dys, |x, _, g| g * quick_gelu_grad(x)),
        UnaryOp::Scale(c) => map3(xs, ys, dys, |_, _, g| g * T::of(c)),
    };
    Tensor::from_vec(out, x.shape().clone())
}

/// `quick_gelu(x + bias)`, bias repeated over the rows.
pub fn bias_quick_gelu<T: Real>(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (xs, bs) = (x.cpu_slice::<T>()?, bias.cpu_slice::<T>()?);
    let width = bs.len().max(1);
    Tensor::from_vec(fill(xs.len(), |i| quick_gelu(xs[i] + bs[i % width])), x.shape().clone())
}

/// dx = dy * quick_gelu'(x + bias); d bias sums dx over the rows in increasing row order.
pub fn bias_quick_gelu_backward<T: Real>(x: &Tensor, bias: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (xs, bs, dys) = (x.cpu_slice::<T>()?, bias.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let width = bs.len().max(1);
    let dx = fill(xs.len(), |i| dys[i] * quick_gelu_grad(xs[i] + bs[i % width]));
    let mut dbias = vec![T::zero(); bs.len()];
    for row in dx.chunks(width) {
        dbias.iter_mut().zip(row).for_each(|(acc, &g)| *acc += g);
    }
    Ok((Tensor::from_vec(dx, x.shape().clone())?, Tensor::from_vec(dbias, bias.shape().clone())?))
}
