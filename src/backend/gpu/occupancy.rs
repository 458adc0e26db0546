//! Theoretical occupancy on sm_90 (H100, H200): how many blocks of a launch one SM holds at
//! once, and which resource runs out first, from ptxas's registers and static shared memory
//! ([`super::modules::kernel_resources`]) and the launch's block size and dynamic shared memory.
//!
//! The rules are those of CUDA's occupancy calculator (`cuda_occupancy.h`) for compute
//! capability 9.0, with the largest shared-memory carveout. Theoretical: a grid smaller than the
//! GPU, or blocks that finish unevenly, leave the achieved occupancy below this.

use super::driver::LaunchConfig;
use super::modules::kernel_resources;

const WARP_THREADS: u32 = 32;
const MAX_THREADS_PER_BLOCK: u32 = 1024;
const MAX_WARPS_PER_SM: u32 = 64;
const MAX_BLOCKS_PER_SM: u32 = 32;
const REGISTERS_PER_SM: u32 = 65536;
const MAX_REGISTERS_PER_THREAD: u32 = 255;
/// Registers are given to a warp in units of 256 (a per-thread count rounded up to 8).
const REGISTER_UNIT_PER_WARP: u32 = 256;
/// The register file is split evenly between the SM's four warp schedulers, and a warp's
/// registers come from its scheduler's quarter, so warps are packed per quarter. (This also
/// keeps every block within the 64 Ki registers a block may have.)
const SCHEDULERS_PER_SM: u32 = 4;
const SHARED_BYTES_PER_SM: u32 = 228 * 1024;
/// The most shared memory a block may use (static + dynamic), after opting in.
const MAX_SHARED_BYTES_PER_BLOCK: u32 = 227 * 1024;
/// Shared memory the driver keeps for itself in every block.
const RESERVED_SHARED_BYTES_PER_BLOCK: u32 = 1024;
const SHARED_UNIT: u32 = 128;

/// What one block of a launch asks of an SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockResources {
    pub threads: u32,
    /// Registers per thread (ptxas's "Used N registers").
    pub registers: u32,
    /// `__shared__` arrays (ptxas's "N bytes smem").
    pub static_shared_bytes: u32,
    /// The launch's dynamic shared memory.
    pub dynamic_shared_bytes: u32,
}

/// The resource that caps the blocks an SM holds. Where several cap it equally, the first of
/// this order is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// Warp (thread) slots: 64 warps, 2048 threads per SM; 1024 threads per block.
    Warps,
    /// The register file: 64 Ki registers per SM, at most 255 per thread.
    Registers,
    /// Shared memory: 228 KiB per SM, at most 227 KiB per block.
    SharedMemory,
    /// Block slots: 32 per SM.
    Blocks,
}

/// Theoretical occupancy of one launch on an sm_90 SM. Zero blocks means the launch cannot run
/// at all, for the reason `limited_by` names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occupancy {
    pub blocks_per_sm: u32,
    pub warps_per_sm: u32,
    /// Active warps over the 64 an SM can hold.
    pub fraction: f64,
    pub limited_by: Limiter,
    /// Blocks per SM each resource alone would allow, in [`Limiter`]'s order (`u32::MAX`
    /// where a kernel uses no registers).
    pub blocks_by: [(Limiter, u32); 4],
}

/// Occupancy of blocks asking for `block` on an sm_90 SM.
pub fn sm90_occupancy(block: BlockResources) -> Occupancy {
    let warps_per_block = block.threads.div_ceil(WARP_THREADS);
    let blocks_by = [
        (Limiter::Warps, blocks_by_warps(block.threads, warps_per_block)),
        (Limiter::Registers, blocks_by_registers(block.registers, warps_per_block)),
        (Limiter::SharedMemory, blocks_by_shared_memory(block.static_shared_bytes, block.dynamic_shared_bytes)),
        (Limiter::Blocks, MAX_BLOCKS_PER_SM),
    ];
    let (limited_by, blocks_per_sm) =
        blocks_by.into_iter().reduce(|least, next| if next.1 < least.1 { next } else { least }).expect("four limits");
    let warps_per_sm = blocks_per_sm * warps_per_block;
    Occupancy {
        blocks_per_sm,
        warps_per_sm,
        fraction: warps_per_sm as f64 / MAX_WARPS_PER_SM as f64,
        limited_by,
        blocks_by,
    }
}

/// Occupancy of launching `kernel` with `config`, from ptxas's report of it; `None` when this
/// build has no GPU image of the kernel (nvcc was not found).
pub fn launch_occupancy(kernel: &str, config: &LaunchConfig) -> Option<Occupancy> {
    let resources = kernel_resources(kernel)?;
    Some(sm90_occupancy(BlockResources {
        threads: config.block.iter().product(),
        registers: resources.registers,
        static_shared_bytes: resources.shared_bytes,
        dynamic_shared_bytes: config.shared_bytes,
    }))
}

fn blocks_by_warps(threads: u32, warps_per_block: u32) -> u32 {
    if threads == 0 || threads > MAX_THREADS_PER_BLOCK { 0 } else { MAX_WARPS_PER_SM / warps_per_block }
}

fn blocks_by_registers(registers: u32, warps_per_block: u32) -> u32 {
    if registers > MAX_REGISTERS_PER_THREAD {
        return 0;
    }
    let per_warp = (registers * WARP_THREADS).next_multiple_of(REGISTER_UNIT_PER_WARP);
    if per_warp == 0 || warps_per_block == 0 {
        return u32::MAX; // no registers, or no block to give them to: no limit from here
    }
    let warps_per_scheduler = REGISTERS_PER_SM / SCHEDULERS_PER_SM / per_warp;
    warps_per_scheduler * SCHEDULERS_PER_SM / warps_per_block
}

fn blocks_by_shared_memory(static_bytes: u32, dynamic_bytes: u32) -> u32 {
    let used = static_bytes.saturating_add(dynamic_bytes);
    if used > MAX_SHARED_BYTES_PER_BLOCK {
        return 0;
    }
    SHARED_BYTES_PER_SM / (used + RESERVED_SHARED_BYTES_PER_BLOCK).next_multiple_of(SHARED_UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupancy(threads: u32, registers: u32, dynamic_shared_bytes: u32) -> Occupancy {
        sm90_occupancy(BlockResources { threads, registers, static_shared_bytes: 0, dynamic_shared_bytes })
    }

    /// (blocks, warps, limiter) of an occupancy.
    fn summary(o: Occupancy) -> (u32, u32, Limiter) {
        (o.blocks_per_sm, o.warps_per_sm, o.limited_by)
    }

    #[test]
    fn registers_cap_256_threads_of_64_registers_at_half() {
        // 64 x 32 = 2048 registers a warp; 16384 per scheduler hold 8 warps, 32 per SM: 4 blocks.
        let o = occupancy(256, 64, 0);
        assert_eq!(summary(o), (4, 32, Limiter::Registers));
        assert_eq!(o.fraction, 0.5);
        assert_eq!(
            o.blocks_by,
            [(Limiter::Warps, 8), (Limiter::Registers, 4), (Limiter::SharedMemory, 228), (Limiter::Blocks, 32)]
        );
    }

    #[test]
    fn full_occupancy_names_warps_when_registers_tie() {
        // 32 registers: 1024 a warp, 16 warps per scheduler, all 64 warps; 16 blocks of 4 warps.
        let o = occupancy(128, 32, 0);
        assert_eq!(summary(o), (16, 64, Limiter::Warps));
        assert_eq!(o.fraction, 1.0);
        assert_eq!(summary(occupancy(1024, 64, 0)), (1, 32, Limiter::Registers));
    }

    #[test]
    fn small_blocks_run_out_of_block_slots() {
        assert_eq!(summary(occupancy(32, 16, 0)), (32, 32, Limiter::Blocks));
        assert_eq!(occupancy(32, 16, 0).fraction, 0.5);
    }

    #[test]
    fn registers_are_allocated_per_warp_in_units_of_256_and_per_scheduler() {
        // 33 registers round up to 40 (1280 a warp): 12 warps per scheduler (16384 / 1280 = 12.8),
        // 48 per SM, 24 two-warp blocks; the whole register file alone would fit 51 warps.
        assert_eq!(summary(occupancy(64, 33, 0)), (24, 48, Limiter::Registers));
        assert_eq!(summary(occupancy(64, 40, 0)), (24, 48, Limiter::Registers));
        assert_eq!(summary(occupancy(64, 41, 0)), (20, 40, Limiter::Registers));
        // 255 registers round up to 256: 8192 a warp, 2 warps per scheduler, one 8-warp block.
        assert_eq!(summary(occupancy(256, 255, 0)), (1, 8, Limiter::Registers));
        assert_eq!(summary(occupancy(512, 255, 0)), (0, 0, Limiter::Registers));
        assert_eq!(summary(occupancy(32, 256, 0)), (0, 0, Limiter::Registers));
    }

    #[test]
    fn shared_memory_counts_the_reserved_kilobyte_and_rounds_to_128_bytes() {
        // 48 KiB + 1 KiB reserved = 50176 bytes a block: 4 fit in 228 KiB.
        assert_eq!(summary(occupancy(128, 32, 48 * 1024)), (4, 16, Limiter::SharedMemory));
        // 38912 bytes a block (reserve included) is a sixth of 228 KiB; one byte more rounds up
        // to 39040 and only five fit.
        assert_eq!(summary(occupancy(32, 16, 38912 - 1024)), (6, 6, Limiter::SharedMemory));
        assert_eq!(summary(occupancy(32, 16, 38912 - 1024 + 1)), (5, 5, Limiter::SharedMemory));
        let static_and_dynamic = sm90_occupancy(BlockResources {
            threads: 32,
            registers: 16,
            static_shared_bytes: 20000,
            dynamic_shared_bytes: 17888,
        });
        assert_eq!(summary(static_and_dynamic), (6, 6, Limiter::SharedMemory));
        // 227 KiB is the most a block may have; it then has the SM to itself.
        assert_eq!(summary(occupancy(128, 32, 227 * 1024)), (1, 4, Limiter::SharedMemory));
        assert_eq!(summary(occupancy(128, 32, 227 * 1024 + 1)), (0, 0, Limiter::SharedMemory));
    }

    #[test]
    fn impossible_block_sizes_cannot_run() {
        assert_eq!(summary(occupancy(1025, 32, 0)), (0, 0, Limiter::Warps));
        assert_eq!(summary(occupancy(0, 32, 0)), (0, 0, Limiter::Warps));
    }

    #[test]
    fn launches_read_ptxas_resources_when_the_build_has_gpu_images() {
        let config = LaunchConfig::linear(1, 256, 0);
        assert_eq!(launch_occupancy("no_such_kernel", &config), None);
        if super::super::modules::GPU_IMAGES_BUILT {
            let kernel = super::super::modules::KERNEL_RESOURCES[0];
            let o = launch_occupancy(kernel.name, &config).expect("a kernel of the report");
            let direct = sm90_occupancy(BlockResources {
                threads: 256,
                registers: kernel.registers,
                static_shared_bytes: kernel.shared_bytes,
                dynamic_shared_bytes: 0,
            });
            assert_eq!(o, direct);
        }
    }
}
