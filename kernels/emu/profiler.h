// The profiler: Nsight Compute's memory and tensor-core counters, counted from the instrumented
// kernels' accesses (tsan_abi.cpp) in a profiled launch. Requests are warp instructions: a lane's
// k-th execution of an instruction joins its warp's other lanes' k-th execution of it, between
// the warp's synchronisation points, which is how the hardware groups a converged warp's accesses.
#pragma once

#include <cstddef>
#include <cstdint>

// The counters of one launch, as the Rust side reads them (src/backend/gpu/emu.rs).
extern "C" struct MsclipEmuCounters {
    uint64_t global_load_requests, global_load_sectors, global_load_bytes;
    uint64_t global_store_requests, global_store_sectors, global_store_bytes;
    uint64_t unique_bytes_read, unique_bytes_written;
    uint64_t unique_sectors_read, unique_sectors_written;
    uint64_t shared_load_requests, shared_load_wavefronts;
    uint64_t shared_store_requests, shared_store_wavefronts;
    // The wavefronts the same requests would take without bank conflicts: one per phase that
    // has a lane in it.
    uint64_t shared_load_ideal_wavefronts, shared_store_ideal_wavefronts;
    uint64_t mma_sync_instructions, wgmma_instructions, tensor_flops;
};

namespace emu::profiler {

void on_access(uintptr_t address, size_t size, bool write, uintptr_t pc);
// A warp's mma.sync (counted once, by lane 0) or a warpgroup's wgmma (by its first thread).
void on_mma_sync();
void on_wgmma(int n);

void begin_launch();
void begin_block(unsigned threads);
// The lanes of `warp` (or, with warp < 0, every warp of the block) met at a synchronisation
// point: their pending requests are complete.
void close_requests(int warp);
MsclipEmuCounters end_launch();

}  // namespace emu::profiler
