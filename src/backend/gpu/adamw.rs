//! Rust side of kernels/adamw.cu: the global gradient norm, the clipping factor and the update
//! of every tensor of an optimizer step in three launches, with nothing read back by the host.

use super::GpuBackend;
use super::buffer::Scratch;
use super::context::{device_ptr, int, ptr, writable_ptr};
use super::driver::{KernelArg, LaunchConfig};
use super::footprint::Footprint;
use crate::backend::{AdamWStep, AdamWTensor, adamw_constants};
use crate::error::{Error, Result};
use crate::nvtx;
use crate::tensor::{DType, Table, Tensor};

/// Elements per block, `ADAMW_CHUNK` in kernels/adamw.cu.
const CHUNK: usize = 4096;
/// `ADAMW_THREADS` in kernels/adamw.cu.
const THREADS: u32 = 256;

/// One `AdamWSlot` of kernels/adamw.cu as ten 64-bit words: param, grad, m, v and bf16-copy
/// pointers (0 for none), element count, first chunk, then three pairs of 32-bit fields, low
/// half first (little-endian): (row of its constants, unused), (gradient is bf16, clamped),
/// (lo, hi).
type Slot = [u64; 10];

/// Two 32-bit values in one table word, `low` in the low half.
fn pair(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

pub(super) fn adamw_multi(gpu: &GpuBackend, tensors: &mut [AdamWTensor<'_>], hp: AdamWStep) -> Result<Tensor> {
    // Made here, rows in call order, when the caller keeps no table of its own.
    let made;
    let constants = match hp.constants {
        Some(table) => table,
        None => {
            let rows = tensors.iter().map(|t| (t.lr, t.weight_decay));
            made = Table::new(adamw_constants(hp.beta1, hp.beta2, hp.step, rows));
            &made
        }
    };
    let rows = constants.len().saturating_sub(1) / 2;
    let mut slots: Vec<Slot> = Vec::with_capacity(tensors.len());
    let mut chunks = 0usize;
    let mut footprint = Footprint::default();
    for (position, t) in tensors.iter_mut().enumerate().filter(|(_, t)| t.param.numel() > 0) {
        check(t)?;
        let row = if hp.constants.is_some() { t.row } else { position };
        if row >= rows {
            return Err(Error::index("adamw", format!("row {row} of constants for {rows} tensors")));
        }
        // Masters and moments are read and written back, the gradient read, the copy written.
        let updated: [&Tensor; 3] = [t.param, t.m, t.v];
        let copy: Vec<&Tensor> = t.bf16_copy.as_deref().into_iter().collect();
        footprint = footprint + Footprint::of(&[&updated[..], &[t.grad]].concat(), &[&updated[..], &copy].concat());
        let copy = match t.bf16_copy.as_deref_mut() {
            Some(c) => writable_ptr(c)?,
            None => 0,
        };
        let (lo, hi) = t.clamp.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        slots.push([
            writable_ptr(t.param)?,
            device_ptr(t.grad)?,
            writable_ptr(t.m)?,
            writable_ptr(t.v)?,
            copy,
            t.param.numel() as u64,
            chunks as u64,
            pair(row as u32, 0),
            pair(u32::from(t.grad.dtype() == DType::BF16), u32::from(t.clamp.is_some())),
            pair((lo as f32).to_bits(), (hi as f32).to_bits()),
        ]);
        chunks += t.param.numel().div_ceil(CHUNK);
    }
    if slots.is_empty() {
        return gpu.zeros([1], DType::F32); // the norm of no gradients; nothing to update
    }
    let blocks = u32::try_from(chunks)
        .map_err(|_| Error::invalid("adamw", format!("{chunks} chunks of {CHUNK} exceed one launch's grid")))?;
    let table = gpu.upload(&slots)?;
    let count = int(slots.len(), "adamw tensors")?;
    let partials = Scratch::uninit(gpu.device(), chunks * 4)?;
    let norm = gpu.uninit([1], DType::F32)?;
    let scale = Scratch::uninit(gpu.device(), 4)?;
    let grads: Vec<&Tensor> = tensors.iter().filter(|t| t.param.numel() > 0).map(|t| t.grad).collect();
    // The global norm and the clipping factor; the update below applies the factor.
    let clip = nvtx::range("clip");
    gpu.launch(
        "grad_sq_partials",
        LaunchConfig::linear(blocks, THREADS, 0),
        &[KernelArg::Ptr(table.ptr()), count, KernelArg::Ptr(partials.ptr())],
        Footprint::of(&grads, &[]).reads(table.bytes()).writes(partials.bytes()),
    )?;
    gpu.launch(
        "grad_norm_finish",
        LaunchConfig::linear(1, THREADS, 0),
        &[
            KernelArg::Ptr(partials.ptr()),
            int(chunks, "adamw chunks")?,
            KernelArg::F32(hp.max_grad_norm.unwrap_or(0.0) as f32),
            ptr(&norm)?,
            KernelArg::Ptr(scale.ptr()),
        ],
        Footprint::of(&[], &[&norm]).reads(partials.bytes()).writes(scale.bytes()),
    )?;
    drop(clip);
    gpu.launch(
        "adamw_multi",
        LaunchConfig::linear(blocks, THREADS, 0),
        &[
            KernelArg::Ptr(table.ptr()),
            count,
            KernelArg::F32(hp.beta1 as f32),
            KernelArg::F32(hp.beta2 as f32),
            KernelArg::F32(hp.eps as f32),
            KernelArg::Ptr(constants.device_ptr(gpu.device())?),
            KernelArg::Ptr(scale.ptr()),
        ],
        footprint.reads(table.bytes() + scale.bytes() + constants.bytes()),
    )?;
    Ok(norm)
}

/// The kernel reads fp32 masters and moments, an f32 or bf16 gradient and writes a bf16 copy,
/// all of the parameter's length: anything else would be read or written out of bounds.
fn check(t: &AdamWTensor<'_>) -> Result<()> {
    let n = t.param.numel();
    let fits = |x: &Tensor, dtypes: &[DType]| x.numel() == n && dtypes.contains(&x.dtype());
    let master = [DType::F32];
    if !fits(t.param, &master) || !fits(t.m, &master) || !fits(t.v, &master) {
        return Err(Error::dtype(
            "adamw",
            format!(
                "the GPU AdamW updates fp32 master weights and moments of equal length, got {:?}, {:?}, {:?}",
                t.param, t.m, t.v
            ),
        ));
    }
    if !fits(t.grad, &[DType::F32, DType::BF16]) {
        return Err(Error::dtype("adamw", format!("gradient {:?} for a {:?} parameter", t.grad, t.param)));
    }
    if let Some(copy) = t.bf16_copy.as_deref().filter(|c| !fits(c, &[DType::BF16])) {
        return Err(Error::dtype("adamw", format!("bf16 copy {copy:?} for a {:?} parameter", t.param)));
    }
    Ok(())
}
