// Hopper's warpgroup MMA (wgmma.mma_async, HGMMA in the SASS): a warpgroup of 4 consecutive warps
// (128 threads, the first warp's index a multiple of 4) computes D (64 x N, fp32) += A (64 x 16) B
// (16 x N), bf16 operands read straight from shared memory through 64-bit matrix descriptors, while
// the issuing threads go on; results are theirs after wgmma.commit_group and wgmma.wait_group.
// Needs the sm_90a target (build.rs compiles every module for it); the compute_90 PTX that also
// goes into the fatbin for forward compatibility traps here, and the host only picks wgmma kernels
// on a compute-capability 9.0 device, where the sm_90a cubin is the one that loads.
//
// Accumulator layout (PTX ISA, "Matrix Fragments for wgmma.mma_async.m64nNk16"): warp w of the
// warpgroup holds rows 16 (w % 4) .. +15 exactly as mma.m16n8k16 holds its C fragment, one 16 x 8
// n-tile after another: d[4 j + i] is row g + 8 (i / 2), column 8 j + 2 t + i % 2 (g = lane / 4,
// t = lane % 4). A float[N8][4] fragment of tile.cuh is therefore the accumulator of an
// m64n(8 N8) product, and the flash-style code around it needs no change.
//
// Shared-memory operands here are K-major without swizzling (the "interleaved" canonical layout):
// both A (M x K) and B (as N x K, i.e. a column-major K x N) are made of core matrices of 8 rows x
// 16 bytes (8 bf16 along K), each 128 contiguous bytes. The descriptor gives the byte distance
// between core matrices adjacent along K (leading dimension byte offset) and between groups of 8
// rows (stride dimension byte offset). tile.cuh's CoreMatrices lays tiles out that way; ldmatrix
// reads the same layout without bank conflicts, so mma.sync code can share the tiles.
//
// The emulator (emu/wgmma.cpp) decodes the same descriptor bits and runs an issued product only
// when a wait lets it complete, so a kernel that changes its operands or reads its accumulators
// before waiting computes garbage there too.
#pragma once

#include "common.cuh"

#if !defined(MSCLIP_EMU) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MSCLIP_WGMMA_UNAVAILABLE  // the compute_90 PTX pass: wgmma is sm_90a-only
#endif

namespace wgmma {

// The address of a shared-memory location as the descriptor encodes it (on the emulator, the
// offset into the block's dynamic shared memory, which is where wgmma operands must live there).
__device__ __forceinline__ uint32_t shared_address(const void* p) {
#ifdef MSCLIP_EMU
    return ::emu::shared_address(p);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// A 14-bit descriptor field: bytes / 16.
__device__ __forceinline__ uint64_t field(uint32_t bytes) { return static_cast<uint64_t>((bytes >> 4) & 0x3fffu); }

// Descriptor of a K-major, unswizzled operand starting at `tile` (16-byte aligned): bits 0-13 the
// start address, 16-29 the byte offset between core matrices along K, 32-45 the byte offset between
// groups of 8 rows; base offset and swizzle mode (bits 49-51, 62-63) zero.
__device__ __forceinline__ uint64_t kmajor_descriptor(const void* tile, uint32_t k_core_bytes,
                                                      uint32_t row_group_bytes) {
    return field(shared_address(tile)) | field(k_core_bytes) << 16 | field(row_group_bytes) << 32;
}

// Makes this thread's ordinary shared-memory stores visible to wgmma, which reads through the
// async proxy; every writing thread runs it before the barrier that precedes the product.
__device__ __forceinline__ void fence_operands() {
#ifdef MSCLIP_EMU
    ::emu::fence_proxy_async();
#else
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Orders earlier register accesses (of the accumulators above all) before the wgmma that follows.
__device__ __forceinline__ void fence() {
#ifdef MSCLIP_EMU
    ::emu::wgmma_fence();
#elif !defined(MSCLIP_WGMMA_UNAVAILABLE)
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

// Closes the group of products issued since the last commit.
__device__ __forceinline__ void commit_group() {
#ifdef MSCLIP_EMU
    ::emu::wgmma_commit();
#elif !defined(MSCLIP_WGMMA_UNAVAILABLE)
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

// Keeps the compiler from moving accesses of an accumulator across the asynchronous product
// (it cannot see that the hardware writes it later).
template <int COUNT>
__device__ __forceinline__ void pin(float* d) {
#ifndef MSCLIP_EMU
    for (int i = 0; i < COUNT; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// Waits until at most PENDING committed groups are still running.
template <int PENDING>
__device__ __forceinline__ void wait_group() {
#ifdef MSCLIP_EMU
    ::emu::wgmma_wait(PENDING);
#elif !defined(MSCLIP_WGMMA_UNAVAILABLE)
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
#endif
}

#define MSCLIP_WGMMA_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define MSCLIP_WGMMA_D16(i) MSCLIP_WGMMA_D4(i), MSCLIP_WGMMA_D4(i + 4), MSCLIP_WGMMA_D4(i + 8), MSCLIP_WGMMA_D4(i + 12)

// d (the 64 x N accumulator, N / 2 floats per thread) += A B over one k-step of 16, A and B
// described by K-major descriptors. Issued by all 128 threads of the warpgroup. Always accumulates
// (scale-d true): the kernels zero their accumulators in ordinary code, behind a fence().
template <int N>
__device__ __forceinline__ void mma_bf16(float* d, uint64_t a, uint64_t b) {
    static_assert(N == 32 || N == 64, "the n sizes the kernels use");
#ifdef MSCLIP_EMU
    ::emu::wgmma_issue(d, N, a, b);
#elif defined(MSCLIP_WGMMA_UNAVAILABLE)
    __trap();
#else
    if constexpr (N == 64) {
        asm volatile(
            "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
            "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, accumulate, 1, 1, 0, 0;\n}"
            : MSCLIP_WGMMA_D16(0), MSCLIP_WGMMA_D16(16)
            : "l"(a), "l"(b));
    } else {
        asm volatile(
            "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, accumulate, 1, 1, 0, "
            "0;\n}"
            : MSCLIP_WGMMA_D16(0)
            : "l"(a), "l"(b));
    }
#endif
}

#undef MSCLIP_WGMMA_D16
#undef MSCLIP_WGMMA_D4

}  // namespace wgmma
