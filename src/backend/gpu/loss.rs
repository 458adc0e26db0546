//! Rust side of kernels/loss.cu (cross-entropy).

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{int, kernel_for, ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::elementwise::{column_sums, to_f32, vec_flag, warp_per_row};
use super::footprint::Footprint;
use crate::error::{Error, Result};
use crate::ops::IGNORE_TARGET;
use crate::tensor::{DType, Table, Tensor};

/// The per-row arguments both kernels share: logits, the targets' device address (the table
/// itself, so a captured graph reads what the next step writes into it), and the launch.
fn rows_setup(
    gpu: &GpuBackend,
    op: &'static str,
    logits: &Tensor,
    targets: &Table,
) -> Result<(usize, KernelArg, LaunchConfig)> {
    let (n, classes) = (logits.dims()[0], logits.dims()[1]);
    int(logits.numel(), "elements")?;
    if targets.len() != n || n == 0 {
        return Err(Error::shape(op, format!("{} targets for logits {}", targets.len(), logits.shape())));
    }
    let words = targets.words();
    if let Some(i) = words.iter().position(|&t| t as usize >= classes && t != IGNORE_TARGET) {
        return Err(Error::index(op, format!("target {} of row {i} for {classes} classes", words[i])));
    }
    Ok((classes, KernelArg::Ptr(targets.device_ptr(gpu.device())?), warp_per_row(n)))
}

/// Returns (the mean loss [1] in the logits' dtype, the fp32 log-sum-exp of each row). The mean
/// is a fixed-order sum of per-row terms (`column_sums`), so it is deterministic.
pub(super) fn cross_entropy(gpu: &GpuBackend, logits: &Tensor, targets: &Table) -> Result<(Tensor, Tensor)> {
    let kernel = kernel_for("cross_entropy", logits.dtype())?;
    let (classes, targets_on_device, launch) = rows_setup(gpu, "cross_entropy", logits, targets)?;
    let n = targets.len();
    let lse = gpu.uninit([n], DType::F32)?;
    let terms = Scratch::uninit(gpu.device(), n * 4)?;
    let args = [
        ptr(logits)?,
        targets_on_device,
        ptr(&lse)?,
        KernelArg::Ptr(terms.ptr()),
        int(n, "rows")?,
        int(classes, "classes")?,
        vec_flag(classes, logits.dtype()),
    ];
    let footprint = Footprint::of(&[logits], &[&lse]).reads(targets.bytes()).writes(terms.bytes());
    gpu.launch(&kernel, launch, &args, footprint)?;
    let loss = gpu.uninit([1], logits.dtype())?;
    column_sums(gpu, (terms.ptr(), DType::F32), [1, n, 1], &loss)?;
    Ok((loss, lse))
}

pub(super) fn cross_entropy_backward(
    gpu: &GpuBackend,
    logits: &Tensor,
    lse: &Tensor,
    targets: &Table,
    dloss: &Tensor,
) -> Result<Tensor> {
    let kernel = kernel_for("cross_entropy_backward", logits.dtype())?;
    let (classes, targets_on_device, launch) = rows_setup(gpu, "cross_entropy_backward", logits, targets)?;
    let (lse, dloss) = (to_f32(gpu, lse)?, to_f32(gpu, dloss)?);
    let dz = gpu.uninit(logits.shape().clone(), logits.dtype())?;
    let args = [
        ptr(logits)?,
        ptr(&lse)?,
        targets_on_device,
        ptr(&dloss)?,
        ptr(&dz)?,
        int(targets.len(), "rows")?,
        int(classes, "classes")?,
        vec_flag(classes, logits.dtype()),
    ];
    let footprint = Footprint::of(&[logits, &lse, &dloss], &[&dz]).reads(targets.bytes());
    gpu.launch(&kernel, launch, &args, footprint)?;
    Ok(dz)
}
