//! Element-wise ops and dtype casts.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::backend::{Activation, BinaryOp, UnaryOp};
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

/// A vector of `len` elements written in parallel: `write(first, out)` gets the chunk that
/// starts at element `first`, always whole rows of `width`, and must write every element of
/// it. Its per-chunk results come back in chunk order. The output is never zero-filled first:
/// on a 2-core VM that memset cost about as much as the op.
fn build_rows<T: Real, R: Send>(
    len: usize,
    width: usize,
    write: impl Fn(usize, &mut [MaybeUninit<T>]) -> R + Sync + Send,
) -> (Vec<T>, Vec<R>) {
    let width = width.max(1);
    let chunk = width * (CHUNK / width).max(1);
    let mut out: Vec<T> = Vec::with_capacity(len);
    let slots = &mut out.spare_capacity_mut()[..len];
    let results = if len >= PARALLEL_MIN {
        slots.par_chunks_mut(chunk).enumerate().map(|(c, o)| write(c * chunk, o)).collect()
    } else {
        slots.chunks_mut(chunk).enumerate().map(|(c, o)| write(c * chunk, o)).collect()
    };
    // SAFETY: the chunks cover all `len` slots and every caller's `write` initialises each
    // slot of its chunk (each is a zip over the whole chunk).
    unsafe { out.set_len(len) };
    (out, results)
}

/// `out[i] = f(x[i])`, one monomorphised loop per op so each can vectorise.
fn map<T: Real>(xs: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    build_rows(xs.len(), CHUNK, |first, out| {
        out.iter_mut().zip(&xs[first..]).for_each(|(o, &x)| {
            o.write(f(x));
        })
    })
    .0
}

/// `out[i] = f(x[i], y[i], dy[i])`.
fn map3<T: Real>(xs: &[T], ys: &[T], dys: &[T], f: impl Fn(T, T, T) -> T + Sync + Send) -> Vec<T> {
    build_rows(xs.len(), CHUNK, |first, out| {
        let inputs = xs[first..].iter().zip(&ys[first..]).zip(&dys[first..]);
        out.iter_mut().zip(inputs).for_each(|(o, ((&x, &y), &dy))| {
            o.write(f(x, y, dy));
        })
    })
    .0
}

/// `out[i] = f(a[i], b[i mod len(b)])`: `b` repeats over rows of its length (a bias, or an
/// operand of the same shape).
fn broadcast<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    if a.len() == b.len() {
        return build_rows(a.len(), CHUNK, |first, out| {
            out.iter_mut().zip(&a[first..]).zip(&b[first..]).for_each(|((o, &x), &y)| {
                o.write(f(x, y));
            })
        })
        .0;
    }
    let width = b.len().max(1);
    build_rows(a.len(), width, |first, out| {
        for (o_row, a_row) in out.chunks_mut(width).zip(a[first..].chunks(width)) {
            o_row.iter_mut().zip(a_row).zip(b).for_each(|((o, &x), &y)| {
                o.write(f(x, y));
            });
        }
    })
    .0
}

pub fn binary<T: Real>(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a_s, b_s) = (a.cpu_slice::<T>()?, b.cpu_slice::<T>()?);
    let out = match op {
        BinaryOp::Add => broadcast(a_s, b_s, |x, y| x + y),
        BinaryOp::Sub => broadcast(a_s, b_s, |x, y| x - y),
        BinaryOp::Mul => broadcast(a_s, b_s, |x, y| x * y),
    };
    Tensor::from_vec(out, a.shape().clone())
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).fast_exp())
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

/// 1 / sqrt(2).
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the standard normal density at 0.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The exact GELU, v Phi(v) = v 0.5 (1 + erf(v / sqrt 2)), in PyTorch's order of operations.
fn gelu<T: Real>(v: T) -> T {
    v * T::of(0.5) * (T::one() + (v * T::of(FRAC_1_SQRT_2)).erf())
}

/// d/dv of v Phi(v) = Phi(v) + v phi(v).
fn gelu_grad<T: Real>(v: T) -> T {
    let cdf = T::of(0.5) * (T::one() + (v * T::of(FRAC_1_SQRT_2)).erf());
    let pdf = T::of(FRAC_1_SQRT_2PI) * (v * v * T::of(-0.5)).fast_exp();
    cdf + v * pdf
}

pub fn unary<T: Real>(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>()?;
    let out = match op {
        UnaryOp::Exp => map(xs, |v| v.exp()),
        UnaryOp::Ln => map(xs, |v| v.ln()),
        UnaryOp::Relu => map(xs, |v| v.max(T::zero())),
        UnaryOp::QuickGelu => map(xs, quick_gelu),
        UnaryOp::Gelu => map(xs, gelu),
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
        UnaryOp::Gelu => map3(xs, ys, dys, |x, _, g| g * gelu_grad(x)),
        UnaryOp::Scale(c) => map3(xs, ys, dys, |_, _, g| g * T::of(c)),
    };
    Tensor::from_vec(out, x.shape().clone())
}

/// `act(x + bias)`, bias repeated over the rows.
pub fn bias_activation<T: Real>(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    let (xs, bs) = (x.cpu_slice::<T>()?, bias.cpu_slice::<T>()?);
    let y = match act {
        Activation::QuickGelu => broadcast(xs, bs, |v, b| quick_gelu(v + b)),
        Activation::Gelu => broadcast(xs, bs, |v, b| gelu(v + b)),
    };
    Tensor::from_vec(y, x.shape().clone())
}

/// dx = dy * act'(x + bias), and d bias ([`bias_grad`]).
pub fn bias_activation_backward<T: Real>(
    x: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
    act: Activation,
) -> Result<(Tensor, Tensor)> {
    let (xs, bs, dys) = (x.cpu_slice::<T>()?, bias.cpu_slice::<T>()?, dy.cpu_slice::<T>()?);
    let (dx, dbias) = match act {
        Activation::QuickGelu => bias_grad(xs, bs, dys, quick_gelu_grad),
        Activation::Gelu => bias_grad(xs, bs, dys, gelu_grad),
    };
    Ok((Tensor::from_vec(dx, x.shape().clone())?, Tensor::from_vec(dbias, bias.shape().clone())?))
}

/// dx = dy * grad(x + bias), one loop per activation. d bias sums dx over the rows: in row
/// order inside each chunk of rows, then over chunks in chunk order (the same for any thread
/// count).
fn bias_grad<T: Real>(xs: &[T], bs: &[T], dys: &[T], grad: impl Fn(T) -> T + Sync + Send) -> (Vec<T>, Vec<T>) {
    let width = bs.len().max(1);
    let (dx, partials) = build_rows(xs.len(), width, |first, out| {
        let mut dbias = vec![T::zero(); bs.len()];
        let rows = out.chunks_mut(width).zip(xs[first..].chunks(width)).zip(dys[first..].chunks(width));
        for ((o_row, x_row), dy_row) in rows {
            let values = o_row.iter_mut().zip(x_row).zip(dy_row).zip(bs).zip(dbias.iter_mut());
            values.for_each(|((((o, &v), &g), &b), acc)| {
                let d = g * grad(v + b);
                o.write(d);
                *acc += d;
            });
        }
        dbias
    });
    let mut dbias = vec![T::zero(); bs.len()];
    for partial in &partials {
        dbias.iter_mut().zip(partial).for_each(|(acc, &p)| *acc += p);
    }
    (dx, dbias)
}
