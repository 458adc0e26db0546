//! Roofline bounds: the least time some work could take on a named GPU, given the bytes it must
//! move through HBM and the tensor-core FLOPs it must do, each side at the device's nominal
//! peak. It is a modelled lower bound, never a measurement: real kernels also pay latency,
//! launch overhead, imperfect occupancy and caches, and measured peaks sit below the nominal
//! ones (DESIGN 6: about 3.0 of 3.35 TB/s and 795 of 989 TFLOP/s on an H100 SXM).

/// The nominal peaks of one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceRoof {
    /// The name [`device_roof`] finds it by.
    pub name: &'static str,
    pub hbm_bytes_per_second: f64,
    /// Dense bf16 tensor-core FLOPs per second (no sparsity).
    pub tensor_flops_per_second: f64,
}

pub const H100_SXM: DeviceRoof =
    DeviceRoof { name: "h100-sxm", hbm_bytes_per_second: 3.35e12, tensor_flops_per_second: 989e12 };
pub const H200: DeviceRoof = DeviceRoof { name: "h200", hbm_bytes_per_second: 4.8e12, tensor_flops_per_second: 989e12 };

/// Every GPU with a roof.
pub const DEVICE_ROOFS: &[DeviceRoof] = &[H100_SXM, H200];

/// The roof of the GPU called `name` (as in [`DEVICE_ROOFS`], any case).
pub fn device_roof(name: &str) -> Option<&'static DeviceRoof> {
    DEVICE_ROOFS.iter().find(|d| d.name.eq_ignore_ascii_case(name))
}

/// Which peak a [`ModelledLowerBound`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoofSide {
    /// HBM bandwidth: the bytes take longer than the FLOPs (or as long).
    Memory,
    /// Tensor-core throughput: the FLOPs take longer than the bytes.
    Compute,
}

/// The least time some work could take on a device by its nominal peaks: a modelled lower
/// bound, not a measurement. Any real run takes at least this long, and usually longer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelledLowerBound {
    /// `max(memory_seconds, compute_seconds)`.
    pub seconds: f64,
    /// The bytes at the HBM peak.
    pub memory_seconds: f64,
    /// The tensor-core FLOPs at the dense bf16 peak.
    pub compute_seconds: f64,
    pub limited_by: RoofSide,
}

impl DeviceRoof {
    /// The modelled lower bound on the time to move `bytes` through HBM and do `tensor_flops`
    /// on the tensor cores.
    pub fn lower_bound(&self, bytes: u64, tensor_flops: u64) -> ModelledLowerBound {
        let memory_seconds = bytes as f64 / self.hbm_bytes_per_second;
        let compute_seconds = tensor_flops as f64 / self.tensor_flops_per_second;
        let limited_by = if compute_seconds > memory_seconds { RoofSide::Compute } else { RoofSide::Memory };
        ModelledLowerBound { seconds: memory_seconds.max(compute_seconds), memory_seconds, compute_seconds, limited_by }
    }

    /// FLOPs per byte at which both sides take equally long (the roofline's ridge point):
    /// work of lower arithmetic intensity is memory-bound.
    pub fn ridge_flops_per_byte(&self) -> f64 {
        self.tensor_flops_per_second / self.hbm_bytes_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs()
    }

    #[test]
    fn a_copy_is_memory_bound_at_the_hbm_peak() {
        // 1 GiB read and written once on an H100 SXM: 2 GiB / 3.35 TB/s.
        let bound = H100_SXM.lower_bound(2 << 30, 0);
        assert!(close(bound.seconds, 2.0 * (1u64 << 30) as f64 / 3.35e12));
        assert_eq!((bound.compute_seconds, bound.limited_by), (0.0, RoofSide::Memory));
    }

    #[test]
    fn a_large_gemm_is_compute_bound() {
        // bf16 8192^3: 2 n^3 FLOPs, 3 n^2 two-byte operands at least.
        let n = 8192u64;
        let (flops, bytes) = (2 * n * n * n, 3 * n * n * 2);
        let bound = H200.lower_bound(bytes, flops);
        assert_eq!(bound.limited_by, RoofSide::Compute);
        assert!(close(bound.seconds, flops as f64 / 989e12));
        assert!(close(bound.memory_seconds, bytes as f64 / 4.8e12));
        // 1.1 ms at best, whatever a measurement later says.
        assert!((1.1e-3..1.12e-3).contains(&bound.seconds), "{}", bound.seconds);
    }

    #[test]
    fn the_ridge_separates_the_two_sides_and_h200_has_the_lower_one() {
        let ridge = H100_SXM.ridge_flops_per_byte();
        assert!(close(ridge, 989e12 / 3.35e12)); // about 295 FLOPs per byte
        let bytes = 1_000_000u64;
        let at_ridge = (ridge * bytes as f64) as u64;
        assert_eq!(H100_SXM.lower_bound(bytes, at_ridge - 1000).limited_by, RoofSide::Memory);
        assert_eq!(H100_SXM.lower_bound(bytes, at_ridge + 1000).limited_by, RoofSide::Compute);
        assert!(H200.ridge_flops_per_byte() < ridge);
        // The same bytes take less time on the H200's faster HBM.
        assert!(H200.lower_bound(bytes, 0).seconds < H100_SXM.lower_bound(bytes, 0).seconds);
    }

    #[test]
    fn devices_are_found_by_name_in_any_case() {
        assert_eq!(device_roof("H200"), Some(&H200));
        assert_eq!(device_roof("h100-sxm"), Some(&H100_SXM));
        assert_eq!(device_roof("a100"), None);
    }
}
