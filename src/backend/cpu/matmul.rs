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
        let (lhs, rhs) = (Strided::packed(lhs, m, k, trans_a), Strided::packed(rhs, k, n, trans_b));
        let spec = GemmSpec { mnk: (m, n, k), trans_a, trans_b, accumulate: bias.is_some(), par };
        // SAFETY: `dst` points at m*n slots of `out`'s capacity; without a bias the GEMM
        // writes each without reading it (beta = 0 in BLAS terms), with one it reads the bias
        // rows written above. The operands are exactly m*k and k*n elements.
        unsafe { gemm_raw(dst, n, lhs, rhs, spec) };
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
    let (a, b) = (Strided::packed(a, m, k, trans_a), Strided::packed(b, k, n, trans_b));
    let spec = GemmSpec { mnk: (m, n, k), trans_a, trans_b, accumulate, par };
    gemm_strided(Strided { data: dst, row_stride: n }, a, b, spec);
}

/// One GEMM's sizes and flags: `dst (m x n) (+)= op(a) (m x k) op(b) (k x n)`.
#[derive(Clone, Copy)]
pub(crate) struct GemmSpec {
    pub(crate) mnk: (usize, usize, usize),
    pub(crate) trans_a: bool,
    pub(crate) trans_b: bool,
    pub(crate) accumulate: bool,
    pub(crate) par: Parallelism,
}

/// A row-major matrix inside a larger buffer: element (i, j) at `i * row_stride + j`, so a
/// block of columns (one head's slice of packed q, k, v rows) is read or written in place.
#[derive(Clone, Copy)]
pub(crate) struct Strided<S> {
    pub(crate) data: S,
    pub(crate) row_stride: usize,
}

impl<'a, T> Strided<&'a [T]> {
    /// A contiguous operand: `rows x cols` as stored, or `cols x rows` stored when `transposed`.
    fn packed(data: &'a [T], rows: usize, cols: usize, transposed: bool) -> Self {
        Strided { data, row_stride: stored_shape(rows, cols, transposed).1 }
    }
}

/// (rows, columns) as stored of a `rows x cols` operand, stored transposed when `transposed`.
fn stored_shape(rows: usize, cols: usize, transposed: bool) -> (usize, usize) {
    if transposed { (cols, rows) } else { (rows, cols) }
}

/// Elements a strided operand spans: `rows` stored rows of `cols` columns each.
fn span(rows: usize, cols: usize, row_stride: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * row_stride + cols }
}

/// [`gemm_into`] on strided operands and destination: `dst` is m x n, `a` stores op(a)
/// (m x k, or k x m rows when `trans_a`) and `b` stores op(b) likewise.
pub(crate) fn gemm_strided<T: Real>(dst: Strided<&mut [T]>, a: Strided<&[T]>, b: Strided<&[T]>, spec: GemmSpec) {
    let GemmSpec { mnk: (m, n, k), trans_a, trans_b, .. } = spec;
    let (a_rows, a_cols) = stored_shape(m, k, trans_a);
    let (b_rows, b_cols) = stored_shape(k, n, trans_b);
    assert!(dst.data.len() >= span(m, n, dst.row_stride), "gemm: destination too short");
    assert!(a.data.len() >= span(a_rows, a_cols, a.row_stride), "gemm: lhs too short");
    assert!(b.data.len() >= span(b_rows, b_cols, b.row_stride), "gemm: rhs too short");
    // SAFETY: the asserts above cover every element the strides address.
    unsafe { gemm_raw(dst.data.as_mut_ptr(), dst.row_stride, a, b, spec) }
}

/// The GEMM on a destination pointer with row stride `dst_stride`, which may point at
/// uninitialised memory when `accumulate` is false (the GEMM then only writes it).
///
/// # Safety
/// `dst` must be valid for writes (and reads, with `accumulate`) of the m x n elements its
/// stride addresses, and `a`, `b` must hold every element theirs address.
unsafe fn gemm_raw<T: Real>(dst: *mut T, dst_stride: usize, a: Strided<&[T]>, b: Strided<&[T]>, spec: GemmSpec) {
    let GemmSpec { mnk: (m, n, k), trans_a, trans_b, accumulate, par } = spec;
    // Strides (row, column) of op(a) as an m x k matrix and op(b) as k x n.
    let (a_ld, b_ld) = (a.row_stride as isize, b.row_stride as isize);
    let (a_rs, a_cs) = if trans_a { (1, a_ld) } else { (a_ld, 1) };
    let (b_rs, b_cs) = if trans_b { (1, b_ld) } else { (b_ld, 1) };
    // SAFETY: the caller's contract covers `dst` and the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
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
