//! The exponential moving average of parameters, the reference of kernels/ema.cu: every target
//! moves toward its source, `t = weight * (s - t) + t` as one fused multiply-add (weight =
//! 1 - decay), so the GPU kernel's fmaf gives the same bits.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{DType, Real, Tensor};

/// Elements per parallel task: small tensors run on one thread.
const MIN_ELEMENTS_PER_TASK: usize = 1 << 14;

pub fn update_all(targets: &mut [&mut Tensor], sources: &[&Tensor], weight: f64) -> Result<()> {
    for (target, source) in targets.iter_mut().zip(sources) {
        match target.dtype() {
            DType::F32 => update::<f32>(target, source, weight)?,
            DType::F64 => update::<f64>(target, source, weight)?,
            other => return Err(Error::dtype("ema_update", format!("the CPU averages f32 or f64, not {other}"))),
        }
    }
    Ok(())
}

/// One tensor, with the weight rounded to its dtype.
fn update<T: Real>(target: &mut Tensor, source: &Tensor, weight: f64) -> Result<()> {
    let (w, s) = (T::of(weight), source.cpu_slice::<T>()?);
    let t = target.cpu_slice_mut::<T>()?;
    t.par_iter_mut().zip(s.par_iter()).with_min_len(MIN_ELEMENTS_PER_TASK).for_each(|(t, &s)| {
        *t = w.mul_add(s - *t, *t);
    });
    Ok(())
}
