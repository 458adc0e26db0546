//! Sums in a fixed order the compiler can vectorise. A float sum written as one running total
//! is a chain of dependent adds that no compiler may reorder; here `LANES` running totals take
//! every `LANES`-th element and are added at the end in lane order. The order is fixed by the
//! code, not the machine, so results stay deterministic, while each lane maps to a SIMD lane.

use crate::tensor::Real;

/// Running totals per sum: 8 f32 fill one AVX register (two for f64).
const LANES: usize = 8;

/// sum over i of f(a[i], b[i]), for equal-length slices.
#[inline]
pub(super) fn lane_sum<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let (a_main, b_main) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_main.remainder(), b_main.remainder());
    for (ca, cb) in a_main.zip(b_main) {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l]);
        }
    }
    for (l, (&x, &y)) in a_tail.iter().zip(b_tail).enumerate() {
        acc[l] += f(x, y);
    }
    acc.iter().fold(T::zero(), |s, &v| s + v)
}

/// The largest element of `a` (-inf when empty), by lanes like the sums: a fold of `max`
/// is a dependent chain the compiler keeps scalar.
pub(super) fn max<T: Real>(a: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(chunk[l]);
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        acc[l] = acc[l].max(x);
    }
    acc.iter().fold(T::neg_infinity(), |m, &v| m.max(v))
}

/// The sum of `a`.
pub(super) fn sum<T: Real>(a: &[T]) -> T {
    lane_sum(a, a, |x, _| x)
}

/// The sum of (a[i] - shift)^2.
pub(super) fn sum_squares_about<T: Real>(a: &[T], shift: T) -> T {
    lane_sum(a, a, |x, _| (x - shift) * (x - shift))
}

/// The dot product of `a` and `b`.
pub(super) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    lane_sum(a, b, |x, y| x * y)
}
