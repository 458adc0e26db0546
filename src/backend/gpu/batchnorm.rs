//! Rust side of kernels/batchnorm.cu: BatchNorm2d, one block per channel for the batch
//! statistics and the backward reductions, one thread per element with given statistics.

use super::GpuBackend;
use super::context::{blocks_for, int, kernel_for, ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::footprint::Footprint;
use crate::backend::BatchNormOut;
use crate::error::Result;
use crate::tensor::Tensor;

/// `BN_THREADS` in kernels/batchnorm.cu.
const THREADS: u32 = 256;

/// The (batch, channels, H*W) ints the kernels take after their pointers, then eps.
fn sizes(x: &Tensor, eps: f64) -> Result<[KernelArg; 4]> {
    let d = x.dims();
    int(x.numel(), "batch_norm elements")?;
    Ok([int(d[0], "batch")?, int(d[1], "channels")?, int(d[2] * d[3], "H*W")?, KernelArg::F32(eps as f32)])
}

/// One block per channel.
fn per_channel(x: &Tensor) -> LaunchConfig {
    LaunchConfig::linear(x.dims()[1] as u32, THREADS, 0)
}

/// Launches `<base>_<dtype>` on the pointers of `inputs` then `outputs`, then `tail`.
fn launch(
    gpu: &GpuBackend,
    base: &str,
    config: LaunchConfig,
    [inputs, outputs]: [&[&Tensor]; 2],
    tail: &[KernelArg],
) -> Result<()> {
    let mut args = inputs.iter().chain(outputs).map(|t| ptr(t)).collect::<Result<Vec<_>>>()?;
    args.extend_from_slice(tail);
    gpu.launch(&kernel_for(base, inputs[0].dtype())?, config, &args, Footprint::of(inputs, outputs))
}

pub(super) fn batch_norm_train(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormOut> {
    let (c, dtype) = (x.dims()[1], x.dtype());
    let out = BatchNormOut {
        y: gpu.uninit(x.shape().clone(), dtype)?,
        mean: gpu.uninit([c], dtype)?,
        var: gpu.uninit([c], dtype)?,
    };
    if c > 0 {
        let tensors: [&[&Tensor]; 2] = [&[x, gamma, beta], &[&out.y, &out.mean, &out.var]];
        launch(gpu, "bn_train", per_channel(x), tensors, &sizes(x, eps)?)?;
    }
    Ok(out)
}

pub(super) fn batch_norm_eval(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let y = gpu.uninit(x.shape().clone(), x.dtype())?;
    if y.numel() > 0 {
        let config = LaunchConfig::linear(blocks_for(y.numel(), THREADS), THREADS, 0);
        launch(gpu, "bn_eval", config, [&[x, gamma, beta, mean, var], &[&y]], &sizes(x, eps)?)?;
    }
    Ok(y)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batch_norm_backward(
    gpu: &GpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    dy: &Tensor,
    eps: f64,
    batch_stats: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (c, dtype) = (x.dims()[1], x.dtype());
    let dx = gpu.uninit(x.shape().clone(), dtype)?;
    let (dgamma, dbeta) = (gpu.uninit([c], dtype)?, gpu.uninit([c], dtype)?);
    if c > 0 {
        let mut tail = sizes(x, eps)?.to_vec();
        tail.push(KernelArg::I32(i32::from(batch_stats)));
        let tensors: [&[&Tensor]; 2] = [&[x, gamma, mean, var, dy], &[&dx, &dgamma, &dbeta]];
        launch(gpu, "bn_backward", per_channel(x), tensors, &tail)?;
    }
    Ok((dx, dgamma, dbeta))
}
