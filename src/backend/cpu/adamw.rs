//! AdamW (Loshchilov & Hutter), with PyTorch's conventions: decoupled decay applied as
//! p *= 1 - lr*wd before the Adam step, bias-corrected moments, eps added to sqrt(v_hat).

use rayon::prelude::*;

use crate::backend::AdamWStep;
use crate::error::Result;
use crate::tensor::{Real, Tensor};

pub fn step<T: Real>(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, hp: AdamWStep) -> Result<()> {
    let g = grad.cpu_slice::<T>()?;
    let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
    let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
    let (b1, b2) = (T::of(hp.beta1), T::of(hp.beta2));
    let decay = T::of(1.0 - hp.lr * hp.weight_decay);
    let step_size = T::of(hp.lr / bc1);
    let (sqrt_bc2, eps, grad_scale) = (T::of(bc2.sqrt()), T::of(hp.eps), T::of(hp.grad_scale));
    let ms = m.cpu_slice_mut::<T>()?;
    let vs = v.cpu_slice_mut::<T>()?;
    let ps = param.cpu_slice_mut::<T>()?;
    ps.par_iter_mut().zip(ms.par_iter_mut()).zip(vs.par_iter_mut()).zip(g.par_iter()).for_each(|(((p, m), v), &g)| {
        let g = g * grad_scale;
        *m = b1 * *m + (T::one() - b1) * g;
        *v = b2 * *v + (T::one() - b2) * g * g;
        *p = *p * decay - step_size * *m / (v.sqrt() / sqrt_bc2 + eps);
    });
    Ok(())
}
