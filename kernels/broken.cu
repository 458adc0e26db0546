// Kernels with one defect each, for the sanitizer's tests (tests/sanitizer.rs): every one must be
// caught with the right report. Nothing else launches them. On a GPU these are real bugs: most
// compute a plausible answer and fail only sometimes, which is why the emulator must catch them.
#include "tile.cuh"
#include "wgmma.cuh"

// Thread 0 fills a shared slot that the other threads read with no barrier between.
extern "C" __global__ void broken_missing_barrier(float* out) {
    __shared__ float slot[1];
    if (threadIdx.x == 0) slot[0] = 42.0f;
    out[threadIdx.x] = slot[0];
}

// Lanes pass values through shared memory without a __syncwarp: the lanes of a warp are not
// ordered (independent thread scheduling).
extern "C" __global__ void broken_missing_syncwarp(float* out) {
    __shared__ float lanes[32];
    lanes[threadIdx.x] = static_cast<float>(threadIdx.x);
    out[threadIdx.x] = lanes[(threadIdx.x + 1) % 32];
}

// `<=` for `<`: the last thread writes one element past the end of `out` (n elements).
extern "C" __global__ void broken_off_by_one_store(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

// The same mistake on a static shared array: thread 31 writes tile[32].
extern "C" __global__ void broken_shared_overflow(float* out) {
    __shared__ float tile[32];
    tile[threadIdx.x + 1] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x];
}

// Half the block waits at one barrier, half at another.
extern "C" __global__ void broken_divergent_barrier(float* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
        out[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        out[threadIdx.x] = 2.0f;
    }
}

// Lanes 0-15 shuffle among themselves (mask 0x0000ffff) but read from lane 20.
extern "C" __global__ void broken_shuffle_outside_mask(float* out) {
    const float v = static_cast<float>(threadIdx.x);
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, v, 20);
}

// Reads `in`, which the host allocated and never wrote.
extern "C" __global__ void broken_unwritten_read(const float* in, float* out) {
    out[threadIdx.x] = in[threadIdx.x] * 2.0f;
}

// Every block stores its index to out[0] with a plain store.
extern "C" __global__ void broken_block_race(int* out) {
    if (threadIdx.x == 0) out[0] = static_cast<int>(blockIdx.x);
}

// A float4 load from an address that is 4-byte but not 16-byte aligned.
extern "C" __global__ void broken_misaligned_load(const float* in, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(in + 1);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// One warpgroup stages a wgmma operand with ordinary stores and multiplies it after the barrier
// with no fence.proxy.async: on Hopper the tensor cores may read stale shared memory.
extern "C" __global__ void __launch_bounds__(128) broken_missing_proxy_fence(const bf16* a, float* out) {
    using Layout = tile::CoreMatrices<32>;
    MSCLIP_DYNAMIC_SMEM(bf16, smem);
    tile::stage_tile<32, Layout>(smem, a, 32, 64, 32);
    __syncthreads();
    float acc[16];
    for (float& v : acc) v = 0.0f;
    wgmma::pin<16>(acc);
    wgmma::fence();
    const uint64_t d = wgmma::kmajor_descriptor(smem, Layout::K_CORE_BYTES, Layout::ROW_GROUP_BYTES);
    wgmma::mma_bf16<32>(acc, d, d);
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::pin<16>(acc);
    out[threadIdx.x] = acc[0];
}
