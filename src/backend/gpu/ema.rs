//! Rust side of kernels/ema.cu: the exponential moving average of every tensor of a model in
//! one launch.

use super::GpuBackend;
use super::context::{device_ptr, int, writable_ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::footprint::Footprint;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Elements per block, `EMA_CHUNK` in kernels/ema.cu.
const CHUNK: usize = 4096;
/// `EMA_THREADS` in kernels/ema.cu.
const THREADS: u32 = 256;

pub(super) fn ema_update(
    gpu: &GpuBackend,
    targets: &mut [&mut Tensor],
    sources: &[&Tensor],
    weight: f64,
) -> Result<()> {
    // One `EmaSlot` per non-empty tensor: target, source, element count, first chunk.
    let mut slots: Vec<[u64; 4]> = Vec::with_capacity(targets.len());
    let mut chunks = 0usize;
    let mut footprint = Footprint::default();
    for (target, source) in targets.iter_mut().zip(sources).filter(|(t, _)| t.numel() > 0) {
        if target.dtype() != DType::F32 || source.dtype() != DType::F32 || target.numel() != source.numel() {
            return Err(Error::dtype(
                "ema_update",
                format!("the GPU averages fp32 tensors of equal length, got {:?} toward {:?}", target, source),
            ));
        }
        footprint = footprint + Footprint::of(&[&**target, *source], &[&**target]);
        slots.push([writable_ptr(target)?, device_ptr(source)?, target.numel() as u64, chunks as u64]);
        chunks += target.numel().div_ceil(CHUNK);
    }
    if slots.is_empty() {
        return Ok(());
    }
    let blocks = u32::try_from(chunks)
        .map_err(|_| Error::invalid("ema_update", format!("{chunks} chunks of {CHUNK} exceed one launch's grid")))?;
    let table = gpu.upload(&slots)?;
    gpu.launch(
        "ema_multi",
        LaunchConfig::linear(blocks, THREADS, 0),
        &[KernelArg::Ptr(table.ptr()), int(slots.len(), "ema tensors")?, KernelArg::F32(weight as f32)],
        footprint.reads(table.bytes()),
    )
}
