// Symmetric InfoNCE (CLIP's contrastive loss), forward and backward, without the N x N logits
// (DESIGN 3, the Inf-CL idea), for the whole batch or one data-parallel rank's share of it.
//
// Over a global batch of n pairs the logits are z[i][j] = t <img_i, txt_j>, t = min(exp(logit_scale),
// max_scale), and the loss is (sum_i row_lse_i + sum_j col_lse_j - 2 sum_i z_ii) / (2n).
//
// Sharding. A rank owns the image rows offset .. offset + n_local - 1 (`img` is that [n_local, d]
// block) and sees all n texts (`txt` is [n, d], all-gathered); the whole batch is the one rank with
// offset 0 and n_local = n, through the same kernels. A rank computes only its rows of z:
// - row direction: each of its image rows against all n texts gives that row's complete lse;
// - column direction: each text j against the rank's image rows gives a PARTIAL lse of column j
//   over those rows. The column's lse is the lse over ranks of the partials: the caller all-gathers
//   them ([ranks, n]) and infonce_combine reduces them in rank order, so every rank gets the same
//   values. (Two all-reduces, max then sum of exp(partial - max), would do as well.)
// A rank's share of the loss holds the terms of its rows i and of the columns j = i (its positive
// pairs), so the shares sum to the loss. Its backward is the gradient of the global loss on its rows
// of z (dloss, the gradient of the global loss, is the same on every rank): d img of its rows is
// complete, while d txt (all n rows) and d(logit scale) are the rank's parts, which the caller sums
// across ranks (reduce-scatter and all-reduce).
//
// A block owns 64 "own" rows and runs over the "other" rows 64 at a time, recomputing each tile of z
// from the features: the row direction has the local image rows as own and the texts as other, the
// column direction the reverse (z^T = t txt img^T), so one kernel body serves both and the grid picks
// the direction. The column direction has n / 64 blocks, each over the rank's n_local rows; the row
// direction would have n_local / 64 blocks, each over all n texts, and finish long after it. So its
// texts are split into row_splits = ceil(text tiles / row blocks) ranges (about the number of ranks;
// 1 for the whole batch), a block per row block and range, and the ranges' results are merged in a
// fixed order: partial row lses by infonce_combine, fp32 partial d img by infonce_sum_splits. Memory
// beyond inputs and outputs is O(n): lse vectors, one partial sum per block, and with splits
// row_splits x n_local (about n) partial lses and rows of d img. No atomics: results are
// deterministic.
//
// - forward (4 warps of 16 rows): online max / sum of exp over the other rows gives each own row's
//   lse; the row direction also sums -2 z_ii over its positive pairs into one partial per block.
// - backward (8 warps): dz = g (exp(z - lse_own) + exp(z - lse_other) - 2 [positive pair]),
//   g = dloss / (2n), and d own = t dz other. A block accumulates d own for its 64 rows and a group
//   of up to 512 feature columns in registers, so each tile of z is computed once per direction and
//   group, i.e. once for d <= 512. Warp (r, h) computes z for own rows 16r.. against other rows
//   32h.., dz is exchanged through shared memory, and the same warp accumulates d own for rows 16r..
//   and the columns 32h.. of each 64-wide feature chunk of the group. The group's chunks of the other
//   rows are staged last in the z loop, one shared slot each, and stay there for the dz product. The
//   row direction also sums dz * z, the gradient of the logit scale (zero while the clamp holds).
//
// Precision: bf16 features feed the tensor cores (their products are exact in fp32, so z is
// fp32-accurate; dz is rounded to bf16 for the d own product). f32 features stay f32 on a SIMT
// path: with t up to 100, rounding features to bf16 would move logits by ~0.4.
#include "tile.cuh"

namespace {

using namespace tile;

// Full unrolling where nvcc's heuristics stop short and a register array would go to local
// memory (the emulator's host compiler needs no hint).
#ifdef MSCLIP_EMU
#define UNROLL
#else
#define UNROLL _Pragma("unroll")
#endif

constexpr int K_CHUNK = 64;          // feature columns per staged chunk
constexpr int BWD_THREADS = 256;     // 8 warps: 4 row groups x 2 halves of the other rows
constexpr int GROUP_CHUNKS = 8;      // feature chunks whose d own a backward block accumulates
constexpr int HALF_COLS = ROWS / 2;  // other rows of z, and feature columns of a chunk, per backward warp
constexpr int STAGE_STRIDE = f32_stride(K_CHUNK);

// Shared operand tiles per feature dtype.
template <typename T>
struct Operand;
template <>
struct Operand<bf16> {
    using S = bf16;
    static constexpr int STRIDE = bf16_stride(K_CHUNK);
};
template <>
struct Operand<float> {
    using S = float;
    static constexpr int STRIDE = f32_stride(K_CHUNK);
};

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

struct Temperature {
    float value;
    bool clamped;
};

template <typename T>
__device__ __forceinline__ Temperature temperature(const T* logit_scale, float max_scale) {
    const float t = expf(to_float(logit_scale[0]));
    return t > max_scale ? Temperature{max_scale, true} : Temperature{t, false};
}

// The batch as one rank sees it, and the ranges the row direction's texts are split into (see the
// top of the file).
struct Shard {
    int n_local, n, offset, row_splits;
};

__device__ __forceinline__ int tiles_of(int rows) { return (rows + ROWS - 1) / ROWS; }

// The direction a block works in, the own rows it holds and the other rows it runs over.
template <typename T>
struct Side {
    const T* own;
    const T* other;
    int own_count, other_count;
    int shift;  // own row r and other row c are a positive pair when r + shift == c
    int split;  // blockIdx.x = split * (own blocks) + the own block
    int r0, rows;
    int c_begin, c_end;  // other rows c_begin .. c_end - 1, c_begin a multiple of 64

    // A block past the direction's blocks gets rows <= 0.
    __device__ static Side of(bool by_column, const T* img, const T* txt, Shard s) {
        const int own_count = by_column ? s.n : s.n_local, other_count = by_column ? s.n_local : s.n;
        const int own_blocks = tiles_of(own_count), splits = by_column ? 1 : s.row_splits;
        const int split = blockIdx.x / own_blocks, r0 = (blockIdx.x % own_blocks) * ROWS;
        const int tiles = tiles_of(other_count);
        return Side{by_column ? txt : img,
                    by_column ? img : txt,
                    own_count,
                    other_count,
                    by_column ? -s.offset : s.offset,
                    split,
                    r0,
                    split < splits ? imin(ROWS, own_count - r0) : 0,
                    ROWS * (split * tiles / splits),
                    imin(other_count, ROWS * ((split + 1) * tiles / splits))};
    }

    __device__ bool positive(int row, int col) const {
        return row < own_count && col < other_count && row + shift == col;
    }
};

// acc (16 own rows x 8*N8 other rows) += own other^T over one feature chunk.
template <int N8>
__device__ __forceinline__ void chunk_product(float acc[N8][4], const bf16* own, const bf16* other) {
    mma_rows<K_CHUNK / 16, N8, Operand<bf16>::STRIDE>(acc, own, other);
}

template <int N8>
__device__ __forceinline__ void chunk_product(float acc[N8][4], const float* own, const float* other) {
    constexpr int S = Operand<float>::STRIDE;
    const Lane p = lane_position();
    for (int k = 0; k < K_CHUNK; k += 4) {
        const float4 a[2] = {*reinterpret_cast<const float4*>(own + p.g * S + k),
                             *reinterpret_cast<const float4*>(own + (p.g + 8) * S + k)};
        for (int j = 0; j < N8; ++j) {
            for (int e = 0; e < 2; ++e) {
                const float4 b = *reinterpret_cast<const float4*>(other + (8 * j + 2 * p.t + e) * S + k);
                for (int half = 0; half < 2; ++half) {
                    float& c = acc[j][2 * half + e];
                    c = fmaf(a[half].x, b.x, c);
                    c = fmaf(a[half].y, b.y, c);
                    c = fmaf(a[half].z, b.z, c);
                    c = fmaf(a[half].w, b.w, c);
                }
            }
        }
    }
}

// Unscaled <own_r, other_c> for the warp's 16 own rows (from row own_row of the block's tile)
// against the 8*N8 other rows other_row.. of the tile at c0, over every feature chunk. The chunks
// g0 .. g0 + group - 1 are staged last, chunk g0 + i into slot i, where the caller finds them
// afterwards; every other chunk goes through slot 0 (with group = 0 all of them, in order).
template <int N8, typename T, typename S>
__device__ void logits_tile(float acc[N8][4], const Side<T>& side, int c0, int d, S* own_tile, S* slots, int own_row,
                            int other_row, int g0, int group) {
    constexpr int STRIDE = Operand<T>::STRIDE;
    zero_fragment<N8>(acc);
    const int chunks = (d + K_CHUNK - 1) / K_CHUNK;
    const int other_rows = imin(ROWS, side.other_count - c0);
    for (int i = 0; i < chunks; ++i) {
        const int chunk = (g0 + group + i) % chunks;
        const int k0 = chunk * K_CHUNK;
        const int slot = chunk >= g0 && chunk < g0 + group ? chunk - g0 : 0;
        S* other_tile = slots + slot * ROWS * STRIDE;
        __syncthreads();  // the previous chunk (or the dz product) is done with the tiles
        stage_rows<K_CHUNK, STRIDE>(own_tile, side.own + static_cast<size_t>(side.r0) * d + k0, d, side.rows, d - k0);
        stage_rows<K_CHUNK, STRIDE>(other_tile, side.other + static_cast<size_t>(c0) * d + k0, d, other_rows, d - k0);
        __syncthreads();
        chunk_product<N8>(acc, own_tile + own_row * STRIDE, other_tile + other_row * STRIDE);
    }
}

// Grid (max(ceil(n / 64), row blocks x row_splits), 2): y = 0 the rank's rows (lse over the texts
// of the block's split, into row_lse[split][row]), y = 1 all columns (partial lse over the rank's
// rows). positive_terms[x] = -2 sum of z_ii over the positive pairs of row-direction block x.
template <typename T>
__device__ void infonce_forward(const T* img, const T* txt, const T* logit_scale, float max_scale, Shard shard, int d,
                                float* row_lse, float* col_lse, float* positive_terms) {
    using S = typename Operand<T>::S;
    constexpr int STRIDE = Operand<T>::STRIDE;
    __shared__ __align__(16) S own_tile[ROWS * STRIDE];
    __shared__ __align__(16) S other_tile[ROWS * STRIDE];
    const bool by_column = blockIdx.y == 1;
    const Side<T> side = Side<T>::of(by_column, img, txt, shard);
    if (side.rows <= 0) return;  // a row block past the rank's rows (the whole block leaves)
    const Lane p = lane_position();
    const int row0 = side.r0 + p.warp * WARP_ROWS;
    const float t = temperature(logit_scale, max_scale).value;

    RowStats st = empty_stats();
    float diagonal = 0.0f;
    for (int c0 = side.c_begin; c0 < side.c_end; c0 += ROWS) {
        float z[8][4];
        logits_tile<8>(z, side, c0, d, own_tile, other_tile, p.warp * WARP_ROWS, 0, 0, 0);
        for (int j = 0; j < 8; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = c0 + 8 * j + 2 * p.t + i % 2, row = row0 + p.g + 8 * (i / 2);
                const float logit = z[j][i] * t;
                if (side.positive(row, col)) diagonal += logit;
                z[j][i] = col < side.other_count ? logit * LOG2E : -INFINITY;
            }
        float rescale[2];
        softmax_step(z, st, rescale);
    }
    float lse[2], inv_sum[2];
    finish_rows(st, lse, inv_sum);
    float* lse_out = by_column ? col_lse : row_lse + static_cast<size_t>(side.split) * side.own_count;
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + p.g + 8 * half;
        if (p.t == 0 && row < side.own_count) lse_out[row] = lse[half];
    }
    if (!by_column) {
        const float total = block_sum(-2.0f * diagonal);
        if (threadIdx.x == 0) positive_terms[blockIdx.x] = total;
    }
}

__device__ __forceinline__ void store_pair(bf16* at, float a, float b) {
    *reinterpret_cast<uint32_t*>(at) = pack_bf16x2(a, b);
}
__device__ __forceinline__ void store_pair(float* at, float a, float b) {
    *reinterpret_cast<float2*>(at) = float2{a, b};
}

// acc[c] (the warp's 16 rows x 32 feature columns of the group's chunk c) += dz other_c, with dz
// the warp's 16 rows of the 64 x 64 dz tile and other_c slot c from the warp's columns on.
template <int STRIDE>
__device__ __forceinline__ void dz_product(float acc[GROUP_CHUNKS][4][4], const bf16* dz_rows, const bf16* other,
                                           int group) {
    const int lane = threadIdx.x % 32;
    uint32_t fa[4][4];
    for (int ks = 0; ks < 4; ++ks) ldmatrix_x4(fa[ks], dz_rows + (lane % 16) * STRIDE + 16 * ks + 8 * (lane / 16));
    UNROLL
    for (int c = 0; c < GROUP_CHUNKS; ++c)
        if (c < group) mma_a_fragments<4, STRIDE>(acc[c], fa, other + c * ROWS * STRIDE);
}

template <int STRIDE>
__device__ __forceinline__ void dz_product(float acc[GROUP_CHUNKS][4][4], const float* dz_rows, const float* other,
                                           int group) {
    const Lane l = lane_position();
    for (int k = 0; k < K_CHUNK; ++k) {
        const float p0 = dz_rows[l.g * STRIDE + k], p1 = dz_rows[(l.g + 8) * STRIDE + k];
        for (int c = 0; c < GROUP_CHUNKS; ++c) {
            if (c >= group) continue;
            for (int j = 0; j < 4; ++j) {
                const float2 b = *reinterpret_cast<const float2*>(other + c * ROWS * STRIDE + k * STRIDE + 8 * j + 2 * l.t);
                acc[c][j][0] = fmaf(p0, b.x, acc[c][j][0]);
                acc[c][j][1] = fmaf(p0, b.y, acc[c][j][1]);
                acc[c][j][2] = fmaf(p1, b.x, acc[c][j][2]);
                acc[c][j][3] = fmaf(p1, b.y, acc[c][j][3]);
            }
        }
    }
}

// Grid (as the forward's x, ceil(d / 512), 2): x own rows (and split), y the group of feature
// columns, z = 0 d img (the rank's rows; with row_splits > 1 the splits' fp32 parts, into
// dimg_parts[split]), 1 d txt (all rows, the rank's part). Dynamic shared memory: the own tile,
// the dz tile and one slot per chunk of the first group (at least one), each 64 operand rows. The
// row-direction blocks of the first group write dscale_partials[x] = their sum of dz * z.
template <typename T>
__device__ void infonce_backward(const T* img, const T* txt, const T* logit_scale, float max_scale, const T* dloss,
                                 const float* row_lse, const float* col_lse, Shard shard, int d, T* dimg, T* dtxt,
                                 float* dimg_parts, float* dscale_partials) {
    using S = typename Operand<T>::S;
    constexpr int STRIDE = Operand<T>::STRIDE;
    static_assert(ROWS * STAGE_STRIDE * sizeof(float) <= 3 * ROWS * STRIDE * sizeof(S),
                  "the output staging fits over the smallest shared memory");
    MSCLIP_DYNAMIC_SMEM(S, smem);
    S* own_tile = smem;
    S* dz_tile = smem + ROWS * STRIDE;
    S* slots = smem + 2 * ROWS * STRIDE;
    const bool by_column = blockIdx.z == 1;
    const Side<T> side = Side<T>::of(by_column, img, txt, shard);
    if (side.rows <= 0) return;  // a row block past the rank's rows (the whole block leaves)
    const int g0 = blockIdx.y * GROUP_CHUNKS;
    const int group = imin(GROUP_CHUNKS, (d + K_CHUNK - 1) / K_CHUNK - g0);
    const float* own_lse = by_column ? col_lse : row_lse;
    const float* other_lse = by_column ? row_lse : col_lse;
    const Lane p = lane_position();
    const int own_row = (p.warp % 4) * WARP_ROWS, other_row = (p.warp / 4) * HALF_COLS;
    const Temperature temp = temperature(logit_scale, max_scale);
    const float t = temp.value;
    const float g = to_float(dloss[0]) / (2.0f * static_cast<float>(shard.n));
    float own_lse2[2];
    for (int half = 0; half < 2; ++half) {
        const int row = side.r0 + own_row + p.g + 8 * half;
        own_lse2[half] = row < side.own_count ? own_lse[row] * LOG2E : 0.0f;
    }

    float grad[GROUP_CHUNKS][4][4];
    for (int c = 0; c < GROUP_CHUNKS; ++c) zero_fragment<4>(grad[c]);
    float dscale = 0.0f;
    for (int c0 = side.c_begin; c0 < side.c_end; c0 += ROWS) {
        float z[4][4];
        logits_tile<4>(z, side, c0, d, own_tile, slots, own_row, other_row, g0, group);
        for (int j = 0; j < 4; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = c0 + other_row + 8 * j + 2 * p.t + i % 2;
                const int row = side.r0 + own_row + p.g + 8 * (i / 2);
                float dz = 0.0f;
                if (row < side.own_count && col < side.other_count) {
                    const float logit = z[j][i] * t, logit2 = logit * LOG2E;
                    const float target = side.positive(row, col) ? 2.0f : 0.0f;
                    dz = g * (exp2f(logit2 - own_lse2[i / 2]) + exp2f(logit2 - other_lse[col] * LOG2E) - target);
                    dscale = fmaf(dz, logit, dscale);
                }
                z[j][i] = dz;
            }
        for (int j = 0; j < 4; ++j)
            for (int half = 0; half < 2; ++half)
                store_pair(dz_tile + (own_row + p.g + 8 * half) * STRIDE + other_row + 8 * j + 2 * p.t,
                           z[j][2 * half], z[j][2 * half + 1]);
        __syncthreads();  // the dz tile is complete
        dz_product<STRIDE>(grad, dz_tile + own_row * STRIDE, slots + other_row, group);
    }
    __syncthreads();  // every warp is done with the tiles: they become the output staging
    float* stage = reinterpret_cast<float*>(smem);
    const bool to_parts = !by_column && shard.row_splits > 1;
    const size_t first = static_cast<size_t>(side.r0) * d;
    T* out = (by_column ? dtxt : dimg) + first;
    float* parts = to_parts ? dimg_parts + static_cast<size_t>(side.split) * shard.n_local * d + first : nullptr;
    UNROLL
    for (int c = 0; c < GROUP_CHUNKS; ++c) {
        if (c >= group) continue;  // the same for the whole block
        fragment_to_stage<4>(stage + own_row * STAGE_STRIDE + other_row, STAGE_STRIDE, grad[c], t);
        __syncthreads();
        const int k0 = (g0 + c) * K_CHUNK;
        if (to_parts) {
            store_rows<K_CHUNK, STAGE_STRIDE>(parts + k0, d, stage, side.rows, d - k0);
        } else {
            store_rows<K_CHUNK, STAGE_STRIDE>(out + k0, d, stage, side.rows, d - k0);
        }
        __syncthreads();  // the chunk is written before the next one is staged
    }
    if (!by_column && blockIdx.y == 0) {
        const float total = block_sum(dscale);
        if (threadIdx.x == 0) dscale_partials[blockIdx.x] = temp.clamped ? 0.0f : total;
    }
}

// One block: out[0] = factor * the sum of a[0 .. a_count), b[0 .. b_count) and c[0 .. c_count), in a
// fixed order.
template <typename T>
__device__ void infonce_reduce(const float* a, int a_count, const float* b, int b_count, const float* c, int c_count,
                               float factor, T* out) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < a_count; i += blockDim.x) acc += a[i];
    for (int i = threadIdx.x; i < b_count; i += blockDim.x) acc += b[i];
    for (int i = threadIdx.x; i < c_count; i += blockDim.x) acc += c[i];
    const float total = block_sum(acc);
    if (threadIdx.x == 0) out[0] = from_float<T>(total * factor);
}

// out[i] = the sum over splits of parts[split][i], in split order.
template <typename T>
__device__ void infonce_sum_splits(const float* parts, int splits, int count, T* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += parts[static_cast<size_t>(s) * count + i];
    out[i] = from_float<T>(sum);
}

}  // namespace

// 128 threads per block; max_scale is +inf without a clamp. The whole batch: n_local = n, offset 0,
// row_splits 1.
extern "C" __global__ void __launch_bounds__(128)
    infonce_fwd_f32(const float* img, const float* txt, const float* logit_scale, float max_scale, int n_local, int n,
                    int offset, int row_splits, int d, float* row_lse, float* col_lse, float* positive_terms) {
    infonce_forward<float>(img, txt, logit_scale, max_scale, Shard{n_local, n, offset, row_splits}, d, row_lse,
                           col_lse, positive_terms);
}
extern "C" __global__ void __launch_bounds__(128)
    infonce_fwd_bf16(const bf16* img, const bf16* txt, const bf16* logit_scale, float max_scale, int n_local, int n,
                     int offset, int row_splits, int d, float* row_lse, float* col_lse, float* positive_terms) {
    infonce_forward<bf16>(img, txt, logit_scale, max_scale, Shard{n_local, n, offset, row_splits}, d, row_lse,
                          col_lse, positive_terms);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS)
    infonce_bwd_f32(const float* img, const float* txt, const float* logit_scale, float max_scale,
                    const float* dloss, const float* row_lse, const float* col_lse, int n_local, int n, int offset,
                    int row_splits, int d, float* dimg, float* dtxt, float* dimg_parts, float* dscale_partials) {
    infonce_backward<float>(img, txt, logit_scale, max_scale, dloss, row_lse, col_lse,
                            Shard{n_local, n, offset, row_splits}, d, dimg, dtxt, dimg_parts, dscale_partials);
}
extern "C" __global__ void __launch_bounds__(BWD_THREADS)
    infonce_bwd_bf16(const bf16* img, const bf16* txt, const bf16* logit_scale, float max_scale, const bf16* dloss,
                     const float* row_lse, const float* col_lse, int n_local, int n, int offset, int row_splits, int d,
                     bf16* dimg, bf16* dtxt, float* dimg_parts, float* dscale_partials) {
    infonce_backward<bf16>(img, txt, logit_scale, max_scale, dloss, row_lse, col_lse,
                           Shard{n_local, n, offset, row_splits}, d, dimg, dtxt, dimg_parts, dscale_partials);
}
// One block of 256 threads.
extern "C" __global__ void infonce_reduce_f32(const float* a, int a_count, const float* b, int b_count, const float* c,
                                              int c_count, float factor, float* out) {
    infonce_reduce<float>(a, a_count, b, b_count, c, c_count, factor, out);
}
extern "C" __global__ void infonce_reduce_bf16(const float* a, int a_count, const float* b, int b_count,
                                               const float* c, int c_count, float factor, bf16* out) {
    infonce_reduce<bf16>(a, a_count, b, b_count, c, c_count, factor, out);
}
// One thread per element.
extern "C" __global__ void infonce_sum_splits_f32(const float* parts, int splits, int count, float* out) {
    infonce_sum_splits<float>(parts, splits, count, out);
}
extern "C" __global__ void infonce_sum_splits_bf16(const float* parts, int splits, int count, bf16* out) {
    infonce_sum_splits<bf16>(parts, splits, count, out);
}
// One thread per column: out[j] = log sum_r exp(partials[r][j]) over partial lses [parts, n] (of
// the ranks, or of a rank's row splits), in order (-inf when every partial is).
extern "C" __global__ void infonce_combine_f32(const float* partials, int parts, int n, float* out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float m = -INFINITY;
    for (int r = 0; r < parts; ++r) m = fmaxf(m, partials[static_cast<size_t>(r) * n + j]);
    float sum = 0.0f;
    for (int r = 0; r < parts && m > -INFINITY; ++r) sum += expf(partials[static_cast<size_t>(r) * n + j] - m);
    out[j] = m > -INFINITY ? m + logf(sum) : m;
}
