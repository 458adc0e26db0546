// Warp tiles shared by the flash-style kernels (attention.cu, infonce.cu).
//
// A block of warps works on "own" rows (queries, keys, image or text rows; 4 warps and 64 rows
// unless a kernel picks its own shape, as attention.cu does); each warp owns 16 of them and holds
// its results in the C-fragment layout of mma.m16n8k16 (common.cuh): lane
// (g = lane/4, t = lane%4) holds acc[j][i] = row g + 8*(i/2), column 8*j + 2*t + i%2. Row
// statistics (softmax max and sum) therefore live in the 4 lanes of a quad and reduce with two
// shuffles; the products that consume a fragment (P V, dS K, ...) take it as the A operand
// directly, without a round trip through shared memory.
//
// Operand tiles are staged in shared memory as bf16 rows padded by 8 elements: rows stay
// 16-byte aligned for ldmatrix and 128-bit stores, and the 8 rows one ldmatrix phase reads fall
// in different banks.
#pragma once

#include "common.cuh"

namespace tile {

constexpr int ROWS = 64;  // rows of a block tile, and columns (keys, k-chunk) per step, by default
constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int WARP_ROWS = ROWS / WARPS;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Shared-memory row strides (elements) for tiles `cols` wide: bf16 operands and fp32 staging.
__host__ __device__ constexpr int bf16_stride(int cols) { return cols + 8; }
__host__ __device__ constexpr int f32_stride(int cols) { return cols + 4; }

struct Lane {
    int warp, lane, g, t;
};

__device__ __forceinline__ Lane lane_position() {
    const int tid = threadIdx.x;
    return Lane{tid / 32, tid % 32, (tid % 32) / 4, tid % 4};
}

// ---- Global <-> shared staging: 8 elements per step, 128-bit accesses where aligned. ----

__device__ __forceinline__ void load8(const bf16* src, float v[8]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    for (int i = 0; i < 4; ++i) {
        v[2 * i] = bf16_to_float(bf16{static_cast<uint16_t>(words[i] & 0xffffu)});
        v[2 * i + 1] = bf16_to_float(bf16{static_cast<uint16_t>(words[i] >> 16)});
    }
}

__device__ __forceinline__ void load8(const float* src, float v[8]) {
    const float4 lo = *reinterpret_cast<const float4*>(src);
    const float4 hi = *reinterpret_cast<const float4*>(src + 4);
    const float all[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    for (int i = 0; i < 8; ++i) v[i] = all[i];
}

__device__ __forceinline__ void store8(bf16* dst, const float v[8]) {
    *reinterpret_cast<uint4*>(dst) = uint4{pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]),
                                           pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7])};
}

__device__ __forceinline__ void store8(float* dst, const float v[8]) {
    *reinterpret_cast<float4*>(dst) = float4{v[0], v[1], v[2], v[3]};
    *reinterpret_cast<float4*>(dst + 4) = float4{v[4], v[5], v[6], v[7]};
}

// Whether rows of `stride` elements starting at `p` allow 16-byte accesses of 8 elements.
template <typename T>
__device__ __forceinline__ bool rows_vectorizable(const T* p, size_t stride) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride * sizeof(T)) % 16 == 0;
}

// ---- Shared operand tile layouts: where element (r, k) of a ROWS-row tile lives, and the order
// in which staging visits its 8-element chunks (chunk c of ROWS * COLS / 8). ----

// Row-major rows STRIDE elements apart (padded, so ldmatrix phases hit distinct banks); staged
// row by row, so a warp reads contiguous global rows. ROW_COUNT rows (attention.cu's tiles may
// have fewer than ROWS).
template <int STRIDE, int ROW_COUNT = ROWS>
struct PaddedRows {
    static constexpr int TILE_ROWS = ROW_COUNT;
    static constexpr int ELEMENTS = TILE_ROWS * STRIDE;
    __device__ static constexpr int offset(int r, int k) { return r * STRIDE + k; }
    template <int CHUNKS>
    __device__ static void chunk(int c, int& r, int& k) {
        r = c / CHUNKS;
        k = (c % CHUNKS) * 8;
    }
};

// wgmma's K-major unswizzled layout (wgmma.cuh): core matrices of 8 rows x 8 elements, 128
// contiguous bytes each, the ROWS / 8 cores of one 8-column block after another, so cores
// adjacent along K are ROWS * 16 bytes apart and row groups 128 bytes. ldmatrix reads it
// conflict-free too. Staging gives each quarter warp 8 rows of one column block (one 128-byte
// core, conflict-free stores) and each warp 64 contiguous bytes of 8 global rows.
template <int COLS>
struct CoreMatrices {
    static_assert(COLS % 32 == 0, "a warp stages 4 column blocks of 8 rows");
    static constexpr int TILE_ROWS = ROWS;
    static constexpr int ELEMENTS = ROWS * COLS;
    static constexpr uint32_t K_CORE_BYTES = ROWS / 8 * 128;
    static constexpr uint32_t ROW_GROUP_BYTES = 128;
    __device__ static constexpr int offset(int r, int k) { return ((k / 8) * (ROWS / 8) + r / 8) * 64 + (r % 8) * 8 + k % 8; }
    template <int CHUNKS>
    __device__ static void chunk(int c, int& r, int& k) {
        const int warp_step = c / 32;
        r = (warp_step % (ROWS / 8)) * 8 + c % 8;
        k = ((warp_step / (ROWS / 8)) * 4 + (c / 8) % 4) * 8;
    }
};

// Element (r, k .. k + 7) of a staged square tile, written into its transpose: `transposed`
// holds element (k + e, r) where Layout puts it. A warp stages four k blocks whose rows sit 32
// words apart in the core-matrix layout, so the four would read and write the same banks at
// every e; each block starts at a different e instead (by 2 per block), which puts the warp's
// 2-byte loads and stores in distinct banks. In order they were 4-way conflicts: 2.8-way over
// the whole wgmma InfoNCE backward (tests/profiler.rs).
template <typename Layout, typename S>
__device__ __forceinline__ void scatter_transposed(S* transposed, int r, int k, const S* values) {
    const int rotation = 2 * ((k / 8) % 4);
    for (int i = 0; i < 8; ++i) {
        const int e = (i + rotation) % 8;
        transposed[Layout::offset(k + e, r)] = values[e];
    }
}

// Stages rows [0, rows) x columns [0, cols) of the row-major matrix at `src` into the
// Layout::TILE_ROWS x COLS shared tile `dst` (element type S, laid out by Layout), with zeros
// elsewhere: padding rows and columns then contribute nothing to the products (and never NaN).
// With `transposed` (square tiles only), the transpose of the tile goes there too, same layout.
template <int COLS, typename Layout, typename S, typename T>
__device__ __forceinline__ void stage_tile(S* dst, const T* src, size_t src_stride, int rows, int cols,
                                           S* transposed = nullptr) {
    static_assert(COLS % 8 == 0, "tiles are staged 8 elements at a time");
    constexpr int CHUNKS = COLS / 8;
    const bool aligned = rows_vectorizable(src, src_stride);
    for (int c = threadIdx.x; c < Layout::TILE_ROWS * CHUNKS; c += blockDim.x) {
        int r, k;
        Layout::template chunk<CHUNKS>(c, r, k);
        const T* from = src + static_cast<size_t>(r) * src_stride + k;
        S* to = dst + Layout::offset(r, k);
        const bool vec = aligned && r < rows && k + 8 <= cols;
        bool copied = false;  // 16-bit to 16-bit rows move as raw 16-byte words
        if constexpr (sizeof(S) == 2 && sizeof(T) == 2) {
            if (vec) {
                *reinterpret_cast<uint4*>(to) = *reinterpret_cast<const uint4*>(from);
                copied = true;
            }
        }
        if (!copied) {
            float v[8];
            if (vec) {
                load8(from, v);
            } else {
                for (int e = 0; e < 8; ++e) v[e] = r < rows && k + e < cols ? to_float(from[e]) : 0.0f;
            }
            store8(to, v);
        }
        if constexpr (COLS == Layout::TILE_ROWS) {
            // The chunk as just stored (S-rounded, zero-padded) goes to its transposed place too.
            if (transposed != nullptr) scatter_transposed<Layout>(transposed, r, k, to);
        }
    }
}

template <int COLS, int STRIDE, int TILE_ROWS = ROWS, typename S, typename T>
__device__ __forceinline__ void stage_rows(S* dst, const T* src, size_t src_stride, int rows, int cols) {
    stage_tile<COLS, PaddedRows<STRIDE, TILE_ROWS>>(dst, src, src_stride, rows, cols);
}

// Writes rows [0, rows) x columns [0, cols) of the fp32 staging tile `stage` (row stride
// STRIDE, at most ROWS rows) to the row-major matrix at `dst`.
template <int COLS, int STRIDE, typename T>
__device__ __forceinline__ void store_rows(T* dst, size_t dst_stride, const float* stage, int rows, int cols) {
    constexpr int CHUNKS = COLS / 8;
    const bool aligned = rows_vectorizable(dst, dst_stride);
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, k = (c % CHUNKS) * 8;
        if (r >= rows) break;  // c grows with r: the remaining chunks are past the last row too
        float v[8];
        load8(stage + r * STRIDE + k, v);
        T* to = dst + static_cast<size_t>(r) * dst_stride + k;
        if (aligned && k + 8 <= cols) {
            store8(to, v);
        } else {
            for (int e = 0; e < 8 && k + e < cols; ++e) to[e] = from_float<T>(v[e]);
        }
    }
}

// Writes a warp's 16 x (8*N8) fragment, times `scale`, into its rows of an fp32 staging tile.
template <int N8>
__device__ __forceinline__ void fragment_to_stage(float* warp_rows, int stride, const float acc[N8][4], float scale) {
    const Lane p = lane_position();
    for (int j = 0; j < N8; ++j) {
        for (int half = 0; half < 2; ++half) {
            float* at = warp_rows + (p.g + 8 * half) * stride + 8 * j + 2 * p.t;
            *reinterpret_cast<float2*>(at) = float2{acc[j][2 * half] * scale, acc[j][2 * half + 1] * scale};
        }
    }
}

template <int N8>
__device__ __forceinline__ void zero_fragment(float acc[N8][4]) {
    for (int j = 0; j < N8; ++j)
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
}

// ---- Tensor-core products on bf16 shared tiles (row stride STRIDE). ----

// acc (16 x 8*N8) += A (16 x 16*KSTEPS) B^T, A the warp's 16 rows, B the block tile's 8*N8 rows,
// both row-major with k contiguous (q against k, dO against v, image against text rows).
template <int KSTEPS, int N8, int STRIDE>
__device__ __forceinline__ void mma_rows(float acc[N8][4], const bf16* a, const bf16* b) {
    static_assert(N8 % 2 == 0, "B fragments load two n-tiles at a time");
    const int lane = threadIdx.x % 32;
    for (int ks = 0; ks < KSTEPS; ++ks) {
        uint32_t fa[4];
        ldmatrix_x4(fa, a + (lane % 16) * STRIDE + 16 * ks + 8 * (lane / 16));
        for (int j = 0; j < N8; j += 2) {
            uint32_t fb[4];
            ldmatrix_x4(fb, b + (8 * j + lane % 8 + 8 * (lane / 16)) * STRIDE + 16 * ks + 8 * ((lane / 8) % 2));
            const uint32_t b0[2] = {fb[0], fb[1]};
            const uint32_t b1[2] = {fb[2], fb[3]};
            mma_m16n8k16_bf16(acc[j], fa, b0, acc[j]);
            mma_m16n8k16_bf16(acc[j + 1], fa, b1, acc[j + 1]);
        }
    }
}

// The A fragments (16 x 8*N8, bf16) of a 16 x 8*N8 fp32 fragment: the C layout of two adjacent
// n-tiles is the A layout of one k-step.
template <int N8>
__device__ __forceinline__ void fragment_as_a(const float (&c)[N8][4], uint32_t (&a)[N8 / 2][4]) {
    static_assert(N8 % 2 == 0, "a k-step takes two n-tiles");
    for (int ks = 0; ks < N8 / 2; ++ks) {
        a[ks][0] = pack_bf16x2(c[2 * ks][0], c[2 * ks][1]);
        a[ks][1] = pack_bf16x2(c[2 * ks][2], c[2 * ks][3]);
        a[ks][2] = pack_bf16x2(c[2 * ks + 1][0], c[2 * ks + 1][1]);
        a[ks][3] = pack_bf16x2(c[2 * ks + 1][2], c[2 * ks + 1][3]);
    }
}

// acc (16 x 8*N8) += A B, A (16 x 16*KSTEPS) as the bf16 A fragments of its k-steps, B a
// 16*KSTEPS x 8*N8 shared tile (rows k, columns n) laid out by Layout.
template <int N8, typename Layout, int KSTEPS>
__device__ __forceinline__ void mma_a_fragments_in(float acc[N8][4], const uint32_t (&fa)[KSTEPS][4], const bf16* b) {
    static_assert(N8 % 2 == 0, "B fragments load two n-tiles at a time");
    const int lane = threadIdx.x % 32;
    for (int ks = 0; ks < KSTEPS; ++ks) {
        for (int j = 0; j < N8; j += 2) {
            uint32_t fb[4];
            ldmatrix_x4_trans(fb, b + Layout::offset(16 * ks + lane % 8 + 8 * ((lane / 8) % 2), 8 * j + 8 * (lane / 16)));
            const uint32_t b0[2] = {fb[0], fb[1]};
            const uint32_t b1[2] = {fb[2], fb[3]};
            mma_m16n8k16_bf16(acc[j], fa[ks], b0, acc[j]);
            mma_m16n8k16_bf16(acc[j + 1], fa[ks], b1, acc[j + 1]);
        }
    }
}

// acc (16 x 8*N8) += P (16 x 8*P8, a fragment) B, B a row-major 8*P8 x 8*N8 shared tile
// (P against v, dS against k or q).
template <int N8, int STRIDE, int P8>
__device__ __forceinline__ void mma_fragment(float acc[N8][4], const float (&p)[P8][4], const bf16* b) {
    uint32_t fa[P8 / 2][4];
    fragment_as_a(p, fa);
    mma_a_fragments_in<N8, PaddedRows<STRIDE>>(acc, fa, b);
}

// ---- Online softmax over the columns of a fragment, per row (log2 domain). ----

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

// Running max and this lane's share of the running sum of exp2 for the lane's two rows.
struct RowStats {
    float max[2];
    float sum[2];
};

__device__ __forceinline__ RowStats empty_stats() {
    return RowStats{{-INFINITY, -INFINITY}, {0.0f, 0.0f}};
}

// Folds one tile of scores (log2 units, -inf where masked) into the statistics: replaces s by
// exp2(s - new max) and returns in `rescale` the factor that older sums (and outputs weighted by
// them) must be multiplied by. A row with every score so far masked keeps max = -inf and sum 0,
// and is computed against 0 so that no -inf - -inf appears.
template <int N8>
__device__ __forceinline__ void softmax_step(float s[N8][4], RowStats& st, float rescale[2]) {
    for (int half = 0; half < 2; ++half) {
        float tile_max = -INFINITY;
        for (int j = 0; j < N8; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
        const float new_max = fmaxf(st.max[half], quad_max(tile_max));
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        rescale[half] = exp2f(st.max[half] - base);
        float sum = 0.0f;
        for (int j = 0; j < N8; ++j) {
            for (int e = 0; e < 2; ++e) {
                s[j][2 * half + e] = exp2f(s[j][2 * half + e] - base);
                sum += s[j][2 * half + e];
            }
        }
        st.sum[half] = st.sum[half] * rescale[half] + sum;
        st.max[half] = new_max;
    }
}

// The row's natural log-sum-exp (-inf for a row that saw nothing) and 1/sum (0 then), with the
// sum reduced over the quad. Every lane of the warp must call it.
__device__ __forceinline__ void finish_rows(const RowStats& st, float lse[2], float inv_sum[2]) {
    for (int half = 0; half < 2; ++half) {
        const float sum = quad_sum(st.sum[half]);
        lse[half] = sum > 0.0f ? (st.max[half] + log2f(sum)) * LN2 : -INFINITY;
        inv_sum[half] = sum > 0.0f ? 1.0f / sum : 0.0f;
    }
}

}  // namespace tile
