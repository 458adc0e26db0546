//! The least a kernel launch must move through device memory: every byte of its inputs read
//! once and every byte of its outputs written once. The launch code knows which tensors those
//! are and says so with each launch; the emulator's profiler sets it beside the unique bytes
//! the launch really touched (docs/gpu.md, "The profiler"). A launch of a multi-pass op counts
//! the partial sums it hands to the next pass as its outputs, and the next pass reads them.

use std::ops::Add;

use super::context::device_ptr;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// The bytes of `tensors`, a tensor passed twice (`x * x`) counted once.
fn bytes_of(tensors: &[&Tensor]) -> u64 {
    let mut seen = Vec::with_capacity(tensors.len());
    let mut bytes = 0;
    for t in tensors {
        let address = device_ptr(t).ok();
        if address.is_none() || !seen.contains(&address) {
            seen.push(address);
            bytes += (t.numel() * t.dtype().size_in_bytes()) as u64;
        }
    }
    bytes
}

impl Footprint {
    /// Every element of `reads` read and every element of `writes` written.
    pub fn of(reads: &[&Tensor], writes: &[&Tensor]) -> Self {
        Footprint { read_bytes: bytes_of(reads), written_bytes: bytes_of(writes) }
    }

    /// Also `bytes` read that are not a whole tensor (index tables, partial sums, a gather's rows).
    pub fn reads(self, bytes: usize) -> Self {
        Footprint { read_bytes: self.read_bytes + bytes as u64, ..self }
    }

    /// Also `bytes` written that are not a whole tensor (partial sums for a later pass).
    pub fn writes(self, bytes: usize) -> Self {
        Footprint { written_bytes: self.written_bytes + bytes as u64, ..self }
    }

    pub fn total_bytes(&self) -> u64 {
        self.read_bytes + self.written_bytes
    }
}

impl Add for Footprint {
    type Output = Footprint;

    fn add(self, other: Footprint) -> Footprint {
        Footprint {
            read_bytes: self.read_bytes + other.read_bytes,
            written_bytes: self.written_bytes + other.written_bytes,
        }
    }
}
