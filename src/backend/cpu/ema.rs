//! The exponential moving average of parameters, the reference of kernels/ema.cu: every target
//! moves toward its source, `t = weight * (s - t) + t` as one fused multiply-add (weight =
//! 1 - decay), so the GPU kernel's fmaf gives the same bits.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Elements per parallel task: small tensors run on one thread.
const MIN_ELEMENTS_PER_TASK: usize = 1 << 14;

pub fn update_all(targets: &mut [&mut Tensor], sources: &[&Tensor], weight: f64) -> Result<()> {
    for (target, source) in targets.iter_mut().zip(sources) {
        match target.dtype() {
            DType::F32 => {
                let (w, s) = (weight as f32, source.cpu_slice::<f32>()?);
                let t = target.cpu_slice_mut::<f32>()?;
                t.par_iter_mut().zip(s.par_iter()).with_min_len(MIN_ELEMENTS_PER_TASK).for_each(|(t, &s)| {
                    *t = w.mul_add(s - *t, *t);
                });
            }
            DType::F64 => {
                let s = source.cpu_slice::<f64>()?;
                let t = target.cpu_slice_mut::<f64>()?;
                t.par_iter_mut().zip(s.par_iter()).with_min_len(MIN_ELEMENTS_PER_TASK).for_each(|(t, &s)| {
                    *t = weight.mul_add(s - *t, *t);
                });
            }
            other => return Err(Error::dtype("ema_update", format!("the CPU averages f32 or f64, not {other}"))),
        }
    }
    Ok(())
}
