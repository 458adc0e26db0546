// Kernels that test the execution model itself: barriers, warp primitives, shared memory and the
// tensor-core wrappers. The emulator's tests run them on the host (tests/emulator.rs); on a GPU
// the same launches check that the emulator and the hardware agree.
#include "tile.cuh"
#include "wgmma.cuh"

// Several rounds of: write my slot, barrier, read a neighbour's slot, barrier. Any missing or
// misplaced barrier returns a stale neighbour value.
extern "C" __global__ void selftest_barrier_rounds(int* out, int rounds) {
    MSCLIP_DYNAMIC_SMEM(int, slots);
    const int n = blockDim.x * blockDim.y;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    int acc = 0;
    for (int r = 0; r < rounds; ++r) {
        slots[tid] = tid * 1000 + r;
        __syncthreads();
        acc += slots[(tid + r + 1) % n];
        __syncthreads();
    }
    out[blockIdx.x * n + tid] = acc;
}

// Every shuffle flavour and the ballot, for one value per lane.
extern "C" __global__ void selftest_warp_ops(const float* in, float* out, unsigned* ballots, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = i < n ? in[i] : 0.0f;
    const int lane = threadIdx.x % 32;
    const float x = __shfl_xor_sync(FULL_MASK, v, 5);
    const float down = __shfl_down_sync(FULL_MASK, v, 3);
    const float up = __shfl_up_sync(FULL_MASK, v, 2);
    const float from7 = __shfl_sync(FULL_MASK, v, 7);
    const float seg = __shfl_xor_sync(FULL_MASK, v, 1, 8);
    const float total = warp_sum(v);
    const float biggest = warp_max(v);
    const unsigned ballot = __ballot_sync(FULL_MASK, v > 0.0f);
    if (i < n) {
        float* o = out + static_cast<size_t>(i) * 7;
        o[0] = x;
        o[1] = down;
        o[2] = up;
        o[3] = from7;
        o[4] = seg;
        o[5] = total;
        o[6] = biggest;
        if (lane == 0) ballots[i / 32] = ballot;
    }
}

// Each block fills static and dynamic shared memory with its own index and sums it back after a
// barrier: blocks running at the same time on different OS threads must not see each other.
extern "C" __global__ void selftest_shared_isolation(int* out, int spin) {
    __shared__ int stat[256];
    MSCLIP_DYNAMIC_SMEM(int, dyn);
    const int tid = threadIdx.x;
    stat[tid] = blockIdx.x;
    dyn[tid] = 2 * blockIdx.x;
    // Busy work between the writes and the reads, so other blocks overlap in time.
    float waste = 0.0f;
    for (int k = 0; k < spin; ++k) waste += static_cast<float>(k % 7);
    __syncthreads();
    if (tid == 0) {
        int sum = 0;
        for (int k = 0; k < static_cast<int>(blockDim.x); ++k) sum += stat[k] + dyn[k];
        out[blockIdx.x] = sum + (waste < 0.0f ? 1 : 0);
    }
}

// Block-wide sum (block_sum) of one row per block.
extern "C" __global__ void selftest_block_sum(const float* in, float* out, int width) {
    float acc = 0.0f;
    for (int j = threadIdx.x; j < width; j += blockDim.x) acc += in[static_cast<size_t>(blockIdx.x) * width + j];
    const float total = block_sum(acc);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// atomicAdd from every thread of every block into one float and one int.
extern "C" __global__ void selftest_atomics(float* fsum, int* isum) {
    atomicAdd(fsum, 1.0f);
    atomicAdd(isum, static_cast<int>(threadIdx.x));
}

// One warp: D = A B with A 16x16 row-major and B 16x16 given twice, row-major (loaded with
// ldmatrix .trans) and transposed (loaded without), through two m16n8k16 tiles each.
// d_trans and d_plain are 16x16 row-major fp32.
extern "C" __global__ void selftest_mma(const bf16* a, const bf16* b, const bf16* bt, float* d_trans, float* d_plain) {
    __shared__ __align__(16) bf16 sa[16 * 16];
    __shared__ __align__(16) bf16 sb[16 * 16];
    __shared__ __align__(16) bf16 sbt[16 * 16];
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) {
        sa[i] = a[i];
        sb[i] = b[i];
        sbt[i] = bt[i];
    }
    __syncthreads();
    uint32_t fa[4], fb[4], fbt[4];
    // A: lanes 0-15 give rows 0-15 at column 0, lanes 16-31 the same rows at column 8.
    ldmatrix_x4(fa, &sa[(lane % 16) * 16 + (lane / 16) * 8]);
    // B row-major [k][n], transposed load: matrix j covers k in 8*(j%2).., n in 8*(j/2)..
    ldmatrix_x4_trans(fb, &sb[((lane % 8) + 8 * ((lane / 8) % 2)) * 16 + 8 * (lane / 16)]);
    // B^T row-major [n][k]: matrix j covers n in 8*(j/2).., k in 8*(j%2)..
    ldmatrix_x4(fbt, &sbt[((lane % 8) + 8 * (lane / 16)) * 16 + 8 * ((lane / 8) % 2)]);
    const int g = lane / 4, t = lane % 4;
    for (int tile = 0; tile < 2; ++tile) {
        const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        float acc_trans[4], acc_plain[4];
        const uint32_t b_trans[2] = {fb[2 * tile], fb[2 * tile + 1]};
        const uint32_t b_plain[2] = {fbt[2 * tile], fbt[2 * tile + 1]};
        mma_m16n8k16_bf16(acc_trans, fa, b_trans, zero);
        mma_m16n8k16_bf16(acc_plain, fa, b_plain, zero);
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i / 2);
            const int col = tile * 8 + 2 * t + (i % 2);
            d_trans[row * 16 + col] = acc_trans[i];
            d_plain[row * 16 + col] = acc_plain[i];
        }
    }
}

// One warpgroup: d64 (64 x 64) = A B^T and d32 (64 x 32) = A B[32..64)^T, A and B 64 x 32
// row-major (rows of B are the n index, k contiguous: wgmma's K-major B), staged in the core-matrix
// layout and multiplied in two k-steps by m64n64k16 and m64n32k16 products in one group. Dynamic
// shared memory: two 64 x 32 bf16 tiles.
extern "C" __global__ void __launch_bounds__(128) selftest_wgmma(const bf16* a, const bf16* b, float* d64, float* d32) {
    using Layout = tile::CoreMatrices<32>;
    MSCLIP_DYNAMIC_SMEM(bf16, smem);
    bf16* sa = smem;
    bf16* sb = smem + Layout::ELEMENTS;
    tile::stage_tile<32, Layout>(sa, a, 32, 64, 32);
    tile::stage_tile<32, Layout>(sb, b, 32, 64, 32);
    wgmma::fence_operands();
    __syncthreads();
    auto descriptor = [](const bf16* at) {
        return wgmma::kmajor_descriptor(at, Layout::K_CORE_BYTES, Layout::ROW_GROUP_BYTES);
    };
    float acc64[32], acc32[16];
    for (float& v : acc64) v = 0.0f;
    for (float& v : acc32) v = 0.0f;
    wgmma::pin<32>(acc64);
    wgmma::pin<16>(acc32);
    wgmma::fence();
    for (int ks = 0; ks < 2; ++ks) {
        const uint64_t da = descriptor(sa + Layout::offset(0, 16 * ks));
        wgmma::mma_bf16<64>(acc64, da, descriptor(sb + Layout::offset(0, 16 * ks)));
        wgmma::mma_bf16<32>(acc32, da, descriptor(sb + Layout::offset(32, 16 * ks)));
    }
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::pin<32>(acc64);
    wgmma::pin<16>(acc32);
    const tile::Lane p = tile::lane_position();
    for (int i = 0; i < 32; ++i) {
        const int row = 16 * p.warp + p.g + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * p.t + i % 2;
        d64[row * 64 + col] = acc64[i];
        if (i < 16) d32[row * 32 + col] = acc32[i];
    }
}

// wgmma misuse the emulator must report: with `wait` 0 the product is never waited for; with
// `mismatched` set, the warps of the warpgroup give different B descriptors.
extern "C" __global__ void __launch_bounds__(128) selftest_wgmma_misuse(const bf16* a, int mismatched, int wait) {
    using Layout = tile::CoreMatrices<32>;
    MSCLIP_DYNAMIC_SMEM(bf16, smem);
    tile::stage_tile<32, Layout>(smem, a, 32, 64, 32);
    wgmma::fence_operands();
    __syncthreads();
    float acc[16] = {};
    wgmma::fence();
    const int b_row = mismatched ? 8 * (static_cast<int>(threadIdx.x) / 32) : 0;
    const uint64_t da = wgmma::kmajor_descriptor(smem, Layout::K_CORE_BYTES, Layout::ROW_GROUP_BYTES);
    const uint64_t db = wgmma::kmajor_descriptor(smem + Layout::offset(b_row, 0), Layout::K_CORE_BYTES,
                                                 Layout::ROW_GROUP_BYTES);
    wgmma::mma_bf16<32>(acc, da, db);
    wgmma::commit_group();
    if (wait) wgmma::wait_group<0>();
}

// Lanes 0-15 wait at a full-warp barrier that lanes 16-31 never reach: the emulator must report
// a deadlock instead of hanging.
extern "C" __global__ void selftest_deadlock(int* out) {
    if (threadIdx.x < 16) {
        __syncwarp(FULL_MASK);
        out[threadIdx.x] = 1;
    }
}

// Performance twins for the profiler (tests/profiler.rs), whose counters are known exactly: a
// copy whose loads are coalesced (stride 1: 4 sectors per warp request) or strided by 8 floats
// (one 32-byte sector per lane: 32 per request); stores coalesced in both.
extern "C" __global__ void selftest_strided_copy(const float* in, float* out, int n, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[(static_cast<long long>(i) * stride) % n];
}

// A 32 x 32 transpose through a shared tile of 32 rows of `PITCH` floats: rows are written
// conflict-free, columns read back with a 32-way bank conflict when PITCH is 32 and none when
// the padding makes it 33. One block of 32 x 32 threads.
template <int PITCH>
__device__ void transpose_tile(const float* in, float* out) {
    __shared__ float tile[32 * PITCH];
    const int x = threadIdx.x, y = threadIdx.y;
    tile[y * PITCH + x] = in[y * 32 + x];
    __syncthreads();
    out[y * 32 + x] = tile[x * PITCH + y];
}
extern "C" __global__ void selftest_transpose_unpadded(const float* in, float* out) { transpose_tile<32>(in, out); }
extern "C" __global__ void selftest_transpose_padded(const float* in, float* out) { transpose_tile<33>(in, out); }
