//! Batched matrix product on the `gemm` crate. Transposes are free: they are strides.

use gemm::Parallelism;

use crate::error::Result;
use crate::tensor::{Real, Tensor};

pub fn matmul<T: Real>(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor> {
    let (batch, m, k) = match (a.dims(), trans_a) {
        (&[batch, m, k], false) | (&[batch, k, m], true) => (batch, m, k),
        _ => unreachable!("ops::matmul passes rank-3 operands"),
    };
    let n = if trans_b { b.dims()[1] } else { b.dims()[2] };
    let (a_s, b_s) = (a.cpu_slice::<T>()?, b.cpu_slice::<T>()?);

    let mut out = vec![T::zero(); batch * m * n];
    if let Some(bias) = bias {
        let bias = bias.cpu_slice::<T>()?;
        for row in out.chunks_mut(n) {
            row.copy_from_slice(bias);
        }
    }
    // Strides (row, column) of op(a) as an m x k matrix and op(b) as k x n.
    let (a_rs, a_cs) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    let threads = rayon::current_num_threads();
    for (i, dst) in out.chunks_mut(m * n).enumerate() {
        let lhs = &a_s[i * m * k..(i + 1) * m * k];
        let rhs = &b_s[i * k * n..(i + 1) * k * n];
        // SAFETY: the slices above hold exactly m*k, k*n and m*n elements, and the strides
        // address them within bounds for the given (m, n, k) and transposition.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                bias.is_some(),
                lhs.as_ptr(),
                a_cs,
                a_rs,
                rhs.as_ptr(),
                b_cs,
                b_rs,
                T::one(),
                T::one(),
                false,
                false,
                false,
                if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None },
            );
        }
    }
    Tensor::from_vec(out, [batch, m, n])
}
