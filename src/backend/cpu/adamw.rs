//! AdamW (Loshchilov & Hutter), with PyTorch's conventions: decoupled decay applied as
//! p *= 1 - lr*wd before the Adam step, bias-corrected moments, eps added to sqrt(v_hat).

use rayon::prelude::*;

use crate::backend::{AdamWStep, AdamWTensor};
use crate::error::Result;
use crate::tensor::{DType, Real};

/// Updates one tensor of a multi-tensor step, then writes its bf16 copy if it has one.
pub fn step<T: Real>(t: &mut AdamWTensor<'_>, hp: AdamWStep) -> Result<()> {
    let g = t.grad.cpu_slice::<T>()?;
    let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
    let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
    let (b1, b2) = (T::of(hp.beta1), T::of(hp.beta2));
    let decay = T::of(1.0 - t.lr * t.weight_decay);
    let step_size = T::of(t.lr / bc1);
    let (sqrt_bc2, eps, grad_scale) = (T::of(bc2.sqrt()), T::of(hp.eps), T::of(hp.grad_scale));
    let ms = t.m.cpu_slice_mut::<T>()?;
    let vs = t.v.cpu_slice_mut::<T>()?;
    let ps = t.param.cpu_slice_mut::<T>()?;
    ps.par_iter_mut().zip(ms.par_iter_mut()).zip(vs.par_iter_mut()).zip(g.par_iter()).for_each(|(((p, m), v), &g)| {
        let g = g * grad_scale;
        *m = b1 * *m + (T::one() - b1) * g;
        *v = b2 * *v + (T::one() - b2) * g * g;
        *p = *p * decay - step_size * *m / (v.sqrt() / sqrt_bc2 + eps);
    });
    if let Some(copy) = t.bf16_copy.as_deref_mut() {
        *copy = super::elementwise::cast(t.param, DType::BF16)?;
    }
    Ok(())
}
