//! Batched matrix product on the `gemm` crate. Transposes are free: they are strides.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::{Real, Tensor};

pub fn matmul<T: Real>(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor> {
    let (batch, m, k) = match (a.dims(), trans_a) {
        (&[batch, m, k], false) | (&[batch, k, m], true) => (batch, m, k),
        _ => unreachable!("ops::matmul passes rank-3 operands"),
    };
    let n = if trans_b { b.dims()[1] } else { b.dims()[2] };
    let (a_s, b_s) = (a.cpu_slice::<T>()?, b.cpu_slice::<T>()?);

    let len = batch * m * n;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let slots = &mut out.spare_capacity_mut()[..len];
    if let Some(bias) = bias {
        // The GEMM accumulates onto the bias rows.
        let bias = bias.cpu_slice::<T>()?;
        slots.par_chunks_mut(n.max(1)).for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(o, &b)| {
                o.write(b);
            })
        });
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    for i in 0..batch {
        let lhs = &a_s[i * m * k..(i + 1) * m * k];
        let rhs = &b_s[i * k * n..(i + 1) * k * n];
        let dst = slots[i * m * n..][..m * n].as_mut_ptr().cast::<T>();
        // SAFETY: `dst` points at m*n slots of `out`'s capacity; without a bias the GEMM
        // writes each without reading it (beta = 0 in BLAS terms), with one it reads the bias
        // rows written above.
        unsafe { gemm_raw(dst, lhs, rhs, (m, n, k), trans_a, trans_b, bias.is_some(), par) };
    }
    // SAFETY: every one of the `len` slots was written by the GEMMs above.
    unsafe { out.set_len(len) };
    Tensor::from_vec(out, [batch, m, n])
}

/// `dst = op(a) op(b)`, or `dst += op(a) op(b)` with `accumulate`, for row-major `dst`
/// (m x n), `a` (m x k, or k x m when `trans_a`) and `b` (k x n, or n x k when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: Real>(
    dst: &mut [T],
    a: &[T],
    b: &[T],
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n, "gemm_into: destination too short");
    // SAFETY: the assert above guarantees m*n elements behind `dst`.
    unsafe { gemm_raw(dst.as_mut_ptr(), a, b, (m, n, k), trans_a, trans_b, accumulate, par) }
}

/// `gemm_into` on a destination pointer, which may point at uninitialised memory when
/// `accumulate` is false (the GEMM then only writes it).
///
/// # Safety
/// `dst` must be valid for m*n writes (and reads, with `accumulate`), row-major m x n.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Real>(
    dst: *mut T,
    a: &[T],
    b: &[T],
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= k * n, "gemm: operand too short");
    // Strides (row, column) of op(a) as an m x k matrix and op(b) as k x n.
    let (a_rs, a_cs) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the caller's contract covers `dst`, the assert above the operands, and the
    // strides address row-major storage of exactly those shapes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}
