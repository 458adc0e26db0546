//! The emulator profiler's launches summed per kernel and launch shape, with the derived
//! figures Nsight Compute's memory workload section shows (sectors per request, sector
//! efficiency, shared wavefronts per request), the bytes moved against the launch code's
//! [`Footprint`], theoretical occupancy, and each row's modelled lower bound on a named GPU.
//! GEMMs, which the emulator runs as the CPU reference, get the same bound from their shapes.

use std::collections::BTreeMap;

use super::driver::{GemmSpec, LaunchConfig};
use super::emu::{KernelCounters, LaunchProfile};
use super::footprint::Footprint;
use super::occupancy::{Occupancy, launch_occupancy};
use super::roofline::{DeviceRoof, ModelledLowerBound};

/// Bytes in a global-memory sector, the unit L2 and HBM move.
pub const SECTOR_BYTES: u64 = 32;

/// How launches are grouped into rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One row per kernel and launch configuration (grid, block, dynamic shared memory).
    KernelAndShape,
    /// One row per kernel.
    Kernel,
}

/// Launches of one kernel (at one launch configuration, or at all of them), counters summed.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelStats {
    pub kernel: String,
    /// The configuration of every launch in the row; None when the row sums several.
    pub config: Option<LaunchConfig>,
    pub launches: u64,
    pub counters: KernelCounters,
    /// The launch code's footprints summed; None when any launch of the row had none.
    pub footprint: Option<Footprint>,
}

fn add(a: &mut KernelCounters, b: &KernelCounters) {
    a.global_load_requests += b.global_load_requests;
    a.global_load_sectors += b.global_load_sectors;
    a.global_load_bytes += b.global_load_bytes;
    a.global_store_requests += b.global_store_requests;
    a.global_store_sectors += b.global_store_sectors;
    a.global_store_bytes += b.global_store_bytes;
    a.unique_bytes_read += b.unique_bytes_read;
    a.unique_bytes_written += b.unique_bytes_written;
    a.unique_sectors_read += b.unique_sectors_read;
    a.unique_sectors_written += b.unique_sectors_written;
    a.shared_load_requests += b.shared_load_requests;
    a.shared_load_wavefronts += b.shared_load_wavefronts;
    a.shared_store_requests += b.shared_store_requests;
    a.shared_store_wavefronts += b.shared_store_wavefronts;
    a.shared_load_ideal_wavefronts += b.shared_load_ideal_wavefronts;
    a.shared_store_ideal_wavefronts += b.shared_store_ideal_wavefronts;
    a.mma_sync_instructions += b.mma_sync_instructions;
    a.wgmma_instructions += b.wgmma_instructions;
    a.tensor_flops += b.tensor_flops;
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

impl KernelStats {
    /// The rows of `profiles`, ordered by kernel name, then launch configuration.
    pub fn group(profiles: &[LaunchProfile], grouping: Grouping) -> Vec<KernelStats> {
        let key = |p: &LaunchProfile| {
            let config = (grouping == Grouping::KernelAndShape).then_some((
                p.config.grid,
                p.config.block,
                p.config.shared_bytes,
            ));
            (p.kernel.clone(), config)
        };
        let mut rows: BTreeMap<_, KernelStats> = BTreeMap::new();
        for p in profiles {
            let row = rows.entry(key(p)).or_insert_with(|| KernelStats {
                kernel: p.kernel.clone(),
                config: Some(p.config),
                launches: 0,
                counters: KernelCounters::default(),
                footprint: Some(Footprint::default()),
            });
            row.launches += 1;
            add(&mut row.counters, &p.counters);
            row.footprint = row.footprint.zip(p.footprint).map(|(a, b)| a + b);
            if row.config != Some(p.config) {
                row.config = None;
            }
        }
        rows.into_values().collect()
    }

    pub fn load_sectors_per_request(&self) -> Option<f64> {
        ratio(self.counters.global_load_sectors, self.counters.global_load_requests)
    }

    pub fn store_sectors_per_request(&self) -> Option<f64> {
        ratio(self.counters.global_store_sectors, self.counters.global_store_requests)
    }

    /// Bytes the warps asked for over the bytes of the sectors their requests touched, loads
    /// and stores together: 1 when every fetched byte is used.
    pub fn sector_efficiency(&self) -> Option<f64> {
        let c = &self.counters;
        ratio(
            c.global_load_bytes + c.global_store_bytes,
            (c.global_load_sectors + c.global_store_sectors) * SECTOR_BYTES,
        )
    }

    /// The distinct sectors read and written, in bytes: what at least crosses between L2 and
    /// HBM when each launch's data comes from HBM once.
    pub fn unique_sector_bytes(&self) -> u64 {
        (self.counters.unique_sectors_read + self.counters.unique_sectors_written) * SECTOR_BYTES
    }

    /// [`Self::unique_sector_bytes`] over the footprint's bytes: 1 when the launches moved
    /// exactly what they must; above, they touched more (or partial sectors); below, some of
    /// their declared operands were not touched at all.
    pub fn over_footprint(&self) -> Option<f64> {
        ratio(self.unique_sector_bytes(), self.footprint?.total_bytes())
    }

    /// Shared-memory wavefronts per request, loads and stores together: 1 for 4-byte accesses
    /// without bank conflicts (4 for 16-byte ones), 32 when every lane of a warp hits one bank
    /// at different addresses.
    pub fn shared_wavefronts_per_request(&self) -> Option<f64> {
        let c = &self.counters;
        ratio(c.shared_load_wavefronts + c.shared_store_wavefronts, c.shared_load_requests + c.shared_store_requests)
    }

    /// Shared-memory wavefronts over those the same requests would take without bank
    /// conflicts: the mean n of "n-way" conflicts, 1 for none, whatever the access width.
    pub fn bank_conflict_factor(&self) -> Option<f64> {
        let c = &self.counters;
        let ideal = c.shared_load_ideal_wavefronts + c.shared_store_ideal_wavefronts;
        ratio(c.shared_load_wavefronts + c.shared_store_wavefronts, ideal)
    }

    /// Theoretical sm_90 occupancy of the row's launch configuration; None for a row of several
    /// configurations or a kernel this build has no ptxas report of.
    pub fn occupancy(&self) -> Option<Occupancy> {
        launch_occupancy(&self.kernel, self.config.as_ref()?)
    }

    /// max(unique sector bytes at the HBM peak, tensor FLOPs at the tensor peak) on `roof`:
    /// modelled, never measured. FLOPs off the tensor cores (the fp32 kernels') are not in it.
    pub fn bound(&self, roof: &DeviceRoof) -> ModelledLowerBound {
        roof.lower_bound(self.unique_sector_bytes(), self.counters.tensor_flops)
    }
}

/// The least bytes and FLOPs of one GEMM call: each operand's distinct elements read once (a
/// shared operand once for the whole batch) and the output written once, 2 m n k FLOPs per
/// batch element (a bias, a row of n, is left out).
pub fn gemm_work(spec: &GemmSpec) -> (u64, u64) {
    let elements: usize = spec.distinct_elements().iter().sum();
    let (b, m, n, k) = (spec.batch as u64, spec.m as u64, spec.n as u64, spec.k as u64);
    ((elements * spec.dtype.size_in_bytes()) as u64, 2 * b * m * n * k)
}

/// The modelled lower bound of `calls` GEMMs of `spec` on `roof`, each at the tensor peak (for
/// f32 GEMMs too, so that it stays a lower bound whatever math mode cuBLAS picks).
pub fn gemm_bound(spec: &GemmSpec, calls: u64, roof: &DeviceRoof) -> ModelledLowerBound {
    let (bytes, flops) = gemm_work(spec);
    roof.lower_bound(bytes * calls, flops * calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::GemmType;
    use crate::backend::gpu::roofline::H100_SXM;

    fn profile(kernel: &str, blocks: u32, loads: (u64, u64, u64), footprint: Option<Footprint>) -> LaunchProfile {
        let counters = KernelCounters {
            global_load_requests: loads.0,
            global_load_sectors: loads.1,
            global_load_bytes: loads.2,
            unique_sectors_read: loads.1,
            ..KernelCounters::default()
        };
        LaunchProfile { kernel: kernel.into(), config: LaunchConfig::linear(blocks, 256, 0), counters, footprint }
    }

    #[test]
    fn launches_are_summed_per_kernel_and_shape() {
        let read = |bytes| Some(Footprint { read_bytes: bytes, written_bytes: 0 });
        let profiles = [
            profile("copy", 1, (1, 4, 128), read(128)),
            profile("copy", 1, (1, 4, 128), read(128)),
            profile("copy", 2, (2, 64, 256), None),
        ];
        let rows = KernelStats::group(&profiles, Grouping::KernelAndShape);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].launches, rows[0].counters.global_load_sectors), (2, 8));
        assert_eq!(rows[0].load_sectors_per_request(), Some(4.0));
        assert_eq!(rows[0].sector_efficiency(), Some(1.0));
        assert_eq!(rows[0].over_footprint(), Some(1.0));
        // 32 sectors per request, an eighth of each used; no footprint for the row.
        assert_eq!(rows[1].load_sectors_per_request(), Some(32.0));
        assert_eq!(rows[1].sector_efficiency(), Some(0.125));
        assert_eq!(rows[1].over_footprint(), None);

        let rows = KernelStats::group(&profiles, Grouping::Kernel);
        assert_eq!((rows.len(), rows[0].launches, rows[0].config), (1, 3, None));
        assert_eq!(rows[0].occupancy(), None);
        assert_eq!(rows[0].unique_sector_bytes(), 72 * SECTOR_BYTES);
    }

    #[test]
    fn a_gemm_bound_counts_operands_once_and_two_flops_per_multiply_add() {
        let spec = GemmSpec::new(GemmType::BF16, 1, (4096, 4096, 4096), (false, true));
        assert_eq!(gemm_work(&spec), (3 * 4096 * 4096 * 2, 2 * 4096 * 4096 * 4096));
        let bound = gemm_bound(&spec, 2, &H100_SXM);
        assert!((bound.compute_seconds - 4.0 * 4096f64.powi(3) / 989e12).abs() < 1e-12);
    }

    #[test]
    fn a_shared_operand_is_read_once_for_the_whole_batch() {
        // A 1x1 conv's forward at batch 8: W (64 x 32) shared, x[n] (32 x 49), y[n] (64 x 49).
        let per_sample = GemmSpec::new(GemmType::BF16, 8, (64, 49, 32), (false, false));
        let shared = per_sample.with_shared_a();
        assert_eq!(gemm_work(&per_sample).0, 8 * (64 * 32 + 32 * 49 + 64 * 49) * 2);
        assert_eq!(gemm_work(&shared), ((64 * 32 + 8 * (32 * 49 + 64 * 49)) * 2, gemm_work(&per_sample).1));
        // Entries closer than their size overlap: the run they cover, once.
        let overlapping = GemmSpec { batch_strides: [10, 32 * 49, 64 * 49], ..per_sample };
        assert_eq!(overlapping.distinct_elements(), [7 * 10 + 64 * 32, 8 * 32 * 49, 8 * 64 * 49]);
    }
}
