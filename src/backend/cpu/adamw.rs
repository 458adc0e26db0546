//! AdamW (Loshchilov & Hutter), with PyTorch's conventions: decoupled decay applied as
//! p *= 1 - lr*wd before the Adam step, bias-corrected moments, eps added to sqrt(v_hat); and
//! torch.nn.utils.clip_grad_norm_'s global-norm clipping, folded into the update.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::backend::{AdamWStep, AdamWTensor};
use crate::error::{Error, Result};
use crate::nvtx;
use crate::tensor::{DType, Real, Tensor};

/// The whole multi-tensor step: the global norm (in f64) and the clipping factor (an NVTX range
/// `clip`), then every tensor's update, or none when the norm is not finite. Returns the norm in
/// the parameters' dtype (f32 when there are none).
pub fn step_all(tensors: &mut [AdamWTensor<'_>], hp: AdamWStep) -> Result<Tensor> {
    let clip = nvtx::range("clip");
    let squares: f64 = tensors.iter().map(|t| sum_of_squares(t.grad)).sum();
    let norm = squares.sqrt();
    let dtype = tensors.first().map_or(DType::F32, |t| t.param.dtype());
    let norm_tensor = Tensor::from_f64(&[norm], [1], dtype)?;
    if !norm.is_finite() {
        return Ok(norm_tensor);
    }
    let grad_scale = match hp.max_grad_norm {
        Some(max) if max > 0.0 && norm > max => max / norm,
        _ => 1.0,
    };
    drop(clip);
    for t in tensors.iter_mut() {
        match t.param.dtype() {
            DType::F32 => step::<f32>(t, hp, grad_scale)?,
            DType::F64 => step::<f64>(t, hp, grad_scale)?,
            other => return Err(Error::dtype("adamw", format!("the CPU updates f32 or f64 parameters, not {other}"))),
        }
    }
    Ok(norm_tensor)
}

/// The sum of a gradient's squares in f64, element by element in order (the same sum as over
/// its f64 copy, without making one).
fn sum_of_squares(grad: &Tensor) -> f64 {
    fn squares(values: impl Iterator<Item = f64>) -> f64 {
        values.map(|g| g * g).sum()
    }
    match (grad.cpu_slice::<f32>(), grad.cpu_slice::<f64>()) {
        (Ok(g), _) => squares(g.iter().map(|&g| f64::from(g))),
        (_, Ok(g)) => squares(g.iter().copied()),
        _ => squares(grad.to_f64_vec().into_iter()),
    }
}

/// Elements per parallel task of the update: the model's many small tensors (biases,
/// LayerNorms) run on one thread instead of being split into tasks smaller than their cost.
const MIN_ELEMENTS_PER_TASK: usize = 1 << 14;

/// Updates one tensor (its gradient times `grad_scale`), clamps it if asked, then writes its
/// bf16 copy if it has one. A gradient of another dtype (bf16, from a bf16 compute copy) is
/// widened to the parameter's first.
fn step<T: Real>(t: &mut AdamWTensor<'_>, hp: AdamWStep, grad_scale: f64) -> Result<()> {
    let grad: Cow<'_, Tensor> = if t.grad.dtype() == t.param.dtype() {
        Cow::Borrowed(t.grad)
    } else {
        Cow::Owned(super::elementwise::cast(t.grad, t.param.dtype())?)
    };
    let g = grad.cpu_slice::<T>()?;
    let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
    let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
    let (b1, b2) = (T::of(hp.beta1), T::of(hp.beta2));
    let decay = T::of(1.0 - t.lr * t.weight_decay);
    let step_size = T::of(t.lr / bc1);
    let (sqrt_bc2, eps, grad_scale) = (T::of(bc2.sqrt()), T::of(hp.eps), T::of(grad_scale));
    let (lo, hi) = t.clamp.map_or((T::neg_infinity(), T::infinity()), |(lo, hi)| (T::of(lo), T::of(hi)));
    let ms = t.m.cpu_slice_mut::<T>()?;
    let vs = t.v.cpu_slice_mut::<T>()?;
    let ps = t.param.cpu_slice_mut::<T>()?;
    let elements = ps.par_iter_mut().zip(ms.par_iter_mut()).zip(vs.par_iter_mut()).zip(g.par_iter());
    elements.with_min_len(MIN_ELEMENTS_PER_TASK).for_each(|(((p, m), v), &g)| {
        let g = g * grad_scale;
        *m = b1 * *m + (T::one() - b1) * g;
        *v = b2 * *v + (T::one() - b2) * g * g;
        let updated = *p * decay - step_size * *m / (v.sqrt() / sqrt_bc2 + eps);
        *p = if updated < lo {
            lo
        } else if updated > hi {
            hi
        } else {
            updated
        };
    });
    if let Some(copy) = t.bf16_copy.as_deref_mut() {
        // In place, as the GPU writes it: the copy keeps its identity and its leaf flag.
        *copy.storage_mut() = super::elementwise::cast(t.param, DType::BF16)?.storage().clone();
    }
    Ok(())
}
