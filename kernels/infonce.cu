// InfoNCE with weighted directions (CLIP's symmetric contrastive loss, OneR's one-directional
// contrasts), forward and backward, without the N x N logits (DESIGN 3, the Inf-CL idea), for the
// whole batch or one data-parallel rank's share of it.
//
// Over a global batch of n pairs the logits are z[i][j] = t <img_i, txt_j>, t = min(exp(logit_scale),
// max_scale), and the loss is (w_rows sum_i (row_lse_i - z_ii) + w_cols sum_j (col_lse_j - z_jj)) / n:
// CLIP's is w_rows = w_cols = 1/2, NCE(img, txt) alone w_rows = 1, w_cols = 0. ("img" and "txt" are
// any two sets of n features, the row and the column set.) The weights only enter the final sums and
// dz; both directions' log-sum-exps are always computed.
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
// - backward (8 warps): dz = g (w_own exp(z - lse_own) + w_other exp(z - lse_other) - (w_rows +
//   w_cols) [positive pair]), g = dloss / n, and d own = t dz other. A block accumulates d own for
//   its 64 rows and a group of up to 512 feature columns in registers, so each tile of z is
//   computed once per direction and group, i.e. once for d <= 512. Warp (r, h) computes z for own
//   rows 16r.. against other rows 32h.., dz is exchanged through shared memory, and the same warp
//   accumulates d own for rows 16r.. and the columns 32h.. of each 64-wide feature chunk of the
//   group. The group's chunks of the other rows are staged last in the z loop, one shared slot
//   each, and stay there for the dz product. The row direction also sums dz * z, the gradient of
//   the logit scale (zero while the clamp holds).
//
// Precision: bf16 features feed the tensor cores (their products are exact in fp32, so z is
// fp32-accurate; dz is rounded to bf16 for the d own product). f32 features stay f32 on a SIMT
// path: with t up to 100, rounding features to bf16 would move logits by ~0.4.
//
// Variants (INFONCE_KERNELS at the bottom): f32 on the CUDA cores; bf16 on mma.sync (any sm_90
// and later GPU through the PTX); bf16 on wgmma (Hopper), where a warpgroup computes a whole
// 64 x 64 logit tile (64 x 32 per warpgroup in the backward) from core-matrix tiles in shared
// memory. Its backward runs both products on wgmma; the dz product's B operand (the other rows'
// features, feature-contiguous) is staged a second time transposed, so that every wgmma operand is
// K-major (the one layout the emulator models, and the one the selftest checks on hardware).
#include "infonce_tiles.cuh"

namespace {

using namespace tile;

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

// Unscaled <own_r, other_c> for the warp's 16 own rows (from row own_row of the block's tile)
// against the 8*N8 other rows other_row.. of the tile at c0, over every feature chunk. The chunks
// g0 .. g0 + group - 1 are staged last, chunk g0 + i into slot i, where the caller finds them
// afterwards (and their transposes in transposed_slots, when given); every other chunk goes
// through slot 0 (with group = 0 all of them, in order).
template <int N8, typename Tiles>
__device__ void logits_tile(float acc[N8][4], const Side<typename Tiles::T>& side, int c0, int d,
                            typename Tiles::T* own_tile, typename Tiles::T* slots, int own_row, int other_row, int g0,
                            int group, typename Tiles::T* transposed_slots = nullptr) {
    using Layout = typename Tiles::Layout;
    zero_fragment<N8>(acc);
    const int chunks = (d + K_CHUNK - 1) / K_CHUNK;
    const int other_rows = imin(ROWS, side.other_count - c0);
    for (int i = 0; i < chunks; ++i) {
        const int chunk = (g0 + group + i) % chunks;
        const int k0 = chunk * K_CHUNK;
        const bool in_group = chunk >= g0 && chunk < g0 + group;
        const int slot = in_group ? chunk - g0 : 0;
        typename Tiles::T* other_tile = slots + slot * Tiles::Pad::ELEMENTS;
        typename Tiles::T* transposed =
            in_group && transposed_slots != nullptr ? transposed_slots + slot * Tiles::Pad::ELEMENTS : nullptr;
        __syncthreads();  // the previous chunk (or the dz product) is done with the tiles
        stage_tile<K_CHUNK, Layout>(own_tile, side.own + static_cast<size_t>(side.r0) * d + k0, d, side.rows, d - k0);
        stage_tile<K_CHUNK, Layout>(other_tile, side.other + static_cast<size_t>(c0) * d + k0, d, other_rows, d - k0,
                                    transposed);
        Tiles::staged();
        __syncthreads();
        Tiles::template product<N8>(acc, own_tile, other_tile, own_row, other_row);
    }
}

// Calls visit(z, c0) for each 64-row tile of the block's other rows (c0 its first row), z the warp's
// 16 own rows (from 16 * warp) x 64 other rows of unscaled logits: the forward's stream of tiles.
// Dynamic shared memory: two padded tiles (own, other chunk), four for a PIPELINED variant, which
// runs the (tile, chunk) steps through two such buffers: while the tensor cores multiply step s,
// the threads stage step s + 1 into the other buffer.
template <typename Tiles, typename Visit>
__device__ void for_each_logit_tile(const Side<typename Tiles::T>& side, int d, typename Tiles::T* smem,
                                    Visit visit) {
    constexpr int TILE = Tiles::Pad::ELEMENTS;
    const int own_row = lane_position().warp * WARP_ROWS;
    float z[8][4];
    if constexpr (!Tiles::PIPELINED) {
        for (int c0 = side.c_begin; c0 < side.c_end; c0 += ROWS) {
            logits_tile<8, Tiles>(z, side, c0, d, smem, smem + TILE, own_row, 0, 0, 0);
            visit(z, c0);
        }
    } else {
        const int chunks = (d + K_CHUNK - 1) / K_CHUNK;
        const int steps = tiles_of(side.c_end - side.c_begin) * chunks;
        auto buffer = [&](int step) { return smem + (step % 2) * 2 * TILE; };
        auto stage = [&](int step) {
            const int c0 = side.c_begin + ROWS * (step / chunks), k0 = (step % chunks) * K_CHUNK;
            const int other_rows = imin(ROWS, side.other_count - c0);
            stage_tile<K_CHUNK, typename Tiles::Layout>(buffer(step), side.own + static_cast<size_t>(side.r0) * d + k0,
                                                        d, side.rows, d - k0);
            stage_tile<K_CHUNK, typename Tiles::Layout>(buffer(step) + TILE, side.other + static_cast<size_t>(c0) * d + k0,
                                                        d, other_rows, d - k0);
            Tiles::staged();
        };
        zero_fragment<8>(z);
        if (steps > 0) stage(0);
        __syncthreads();
        for (int step = 0; step < steps; ++step) {
            Tiles::template issue<8>(z, buffer(step), buffer(step) + TILE, 0);
            if (step + 1 < steps) stage(step + 1);  // the buffer step - 1 read, free since its wait
            Tiles::template complete<8>(z);
            __syncthreads();  // this step's buffer is free again and the next one is staged
            if (step % chunks == chunks - 1) {
                visit(z, side.c_begin + ROWS * (step / chunks));
                zero_fragment<8>(z);
            }
        }
    }
}

// Grid (max(ceil(n / 64), row blocks x row_splits), 2): y = 0 the rank's rows (lse over the texts
// of the block's split, into row_lse[split][row]), y = 1 all columns (partial lse over the rank's
// rows). positive_terms[x] = -2 sum of z_ii over the positive pairs of row-direction block x.
// Dynamic shared memory: as for_each_logit_tile says.
template <typename Tiles, typename T = typename Tiles::T>
__device__ void infonce_forward(const T* img, const T* txt, const T* logit_scale, float max_scale, Shard shard, int d,
                                float* row_lse, float* col_lse, float* positive_terms) {
    MSCLIP_DYNAMIC_SMEM(T, smem);
    const bool by_column = blockIdx.y == 1;
    const Side<T> side = Side<T>::of(by_column, img, txt, shard);
    if (side.rows <= 0) return;  // a row block past the rank's rows (the whole block leaves)
    const Lane p = lane_position();
    const int row0 = side.r0 + p.warp * WARP_ROWS;
    const float t = temperature(logit_scale, max_scale).value;

    RowStats st = empty_stats();
    float diagonal = 0.0f;
    for_each_logit_tile<Tiles>(side, d, smem, [&](float z[8][4], int c0) {
        for (int j = 0; j < 8; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = c0 + 8 * j + 2 * p.t + i % 2, row = row0 + p.g + 8 * (i / 2);
                const float logit = z[j][i] * t;
                if (side.positive(row, col)) diagonal += logit;
                z[j][i] = col < side.other_count ? logit * LOG2E : -INFINITY;
            }
        float rescale[2];
        softmax_step<8>(z, st, rescale);
    });
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

// Grid (as the forward's x, ceil(d / 512), 2): x own rows (and split), y the group of feature
// columns, z = 0 d img (the rank's rows; with row_splits > 1 the splits' fp32 parts, into
// dimg_parts[split]), 1 d txt (all rows, the rank's part). Dynamic shared memory: the own tile,
// the dz tile and SLOT_COPIES slots per chunk of the first group (at least one), each a padded
// tile. The row-direction blocks of the first group write dscale_partials[x] = their sum of dz * z.
template <typename Tiles, typename T = typename Tiles::T>
__device__ void infonce_backward(const T* img, const T* txt, const T* logit_scale, float max_scale, const T* dloss,
                                 const float* row_lse, const float* col_lse, float w_rows, float w_cols, Shard shard,
                                 int d, T* dimg, T* dtxt, float* dimg_parts, float* dscale_partials) {
    using Dz = typename Tiles::Pad;
    static_assert(ROWS * STAGE_STRIDE * sizeof(float) <= 3 * Dz::ELEMENTS * sizeof(T),
                  "the output staging fits over the smallest shared memory");
    MSCLIP_DYNAMIC_SMEM(T, smem);
    T* own_tile = smem;
    T* dz_tile = smem + Dz::ELEMENTS;
    T* slots = smem + 2 * Dz::ELEMENTS;
    const int first_group = imin(GROUP_CHUNKS, (d + K_CHUNK - 1) / K_CHUNK);
    T* transposed_slots = Tiles::SLOT_COPIES == 2 ? slots + first_group * Dz::ELEMENTS : nullptr;
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
    const float g = to_float(dloss[0]) / static_cast<float>(shard.n);
    const float w_own = by_column ? w_cols : w_rows, w_other = by_column ? w_rows : w_cols;
    const float w_positive = w_rows + w_cols;
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
        logits_tile<4, Tiles>(z, side, c0, d, own_tile, slots, own_row, other_row, g0, group, transposed_slots);
        for (int j = 0; j < 4; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = c0 + other_row + 8 * j + 2 * p.t + i % 2;
                const int row = side.r0 + own_row + p.g + 8 * (i / 2);
                float dz = 0.0f;
                if (row < side.own_count && col < side.other_count) {
                    const float logit = z[j][i] * t, logit2 = logit * LOG2E;
                    const float target = side.positive(row, col) ? w_positive : 0.0f;
                    dz = g * (w_own * exp2f(logit2 - own_lse2[i / 2]) +
                              w_other * exp2f(logit2 - other_lse[col] * LOG2E) - target);
                    dscale = fmaf(dz, logit, dscale);
                }
                z[j][i] = dz;
            }
        for (int j = 0; j < 4; ++j)
            for (int half = 0; half < 2; ++half)
                store_pair(dz_tile + Tiles::DzLayout::offset(own_row + p.g + 8 * half, other_row + 8 * j + 2 * p.t),
                           z[j][2 * half], z[j][2 * half + 1]);
        Tiles::staged();
        __syncthreads();  // the dz tile is complete
        Tiles::dz_product(grad, dz_tile, slots, transposed_slots, own_row, other_row, group);
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

// One block: out[0] = factor * the sum of wa a[0 .. a_count), wb b[0 .. b_count) and
// wc c[0 .. c_count), in a fixed order.
template <typename T>
__device__ void infonce_reduce(const float* a, int a_count, float wa, const float* b, int b_count, float wb,
                               const float* c, int c_count, float wc, float factor, T* out) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < a_count; i += blockDim.x) acc += wa * a[i];
    for (int i = threadIdx.x; i < b_count; i += blockDim.x) acc += wb * b[i];
    for (int i = threadIdx.x; i < c_count; i += blockDim.x) acc += wc * c[i];
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

// Forward and backward for one tile variant (see SimtF32, MmaBf16, WgmmaBf16): the forward with 128
// threads per block, the backward with BWD_THREADS. max_scale is +inf without a clamp; the whole
// batch is n_local = n, offset 0, row_splits 1.
#define INFONCE_KERNELS(NAME, TILES, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                                  \
        infonce_fwd_##NAME(const T* img, const T* txt, const T* logit_scale, float max_scale, int n_local, int n,      \
                           int offset, int row_splits, int d, float* row_lse, float* col_lse, float* positive_terms) { \
        infonce_forward<TILES>(img, txt, logit_scale, max_scale, Shard{n_local, n, offset, row_splits}, d, row_lse,    \
                               col_lse, positive_terms);                                                               \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(BWD_THREADS)                                                          \
        infonce_bwd_##NAME(const T* img, const T* txt, const T* logit_scale, float max_scale, const T* dloss,          \
                           const float* row_lse, const float* col_lse, float w_rows, float w_cols, int n_local, int n, \
                           int offset, int row_splits, int d, T* dimg, T* dtxt, float* dimg_parts,                     \
                           float* dscale_partials) {                                                                   \
        infonce_backward<TILES>(img, txt, logit_scale, max_scale, dloss, row_lse, col_lse, w_rows, w_cols,             \
                                Shard{n_local, n, offset, row_splits}, d, dimg, dtxt, dimg_parts, dscale_partials);    \
    }

INFONCE_KERNELS(f32, SimtF32, float)
INFONCE_KERNELS(bf16, MmaBf16, bf16)
INFONCE_KERNELS(wgmma_bf16, WgmmaBf16, bf16)

// One block of 256 threads.
extern "C" __global__ void infonce_reduce_f32(const float* a, int a_count, float wa, const float* b, int b_count,
                                              float wb, const float* c, int c_count, float wc, float factor,
                                              float* out) {
    infonce_reduce<float>(a, a_count, wa, b, b_count, wb, c, c_count, wc, factor, out);
}
extern "C" __global__ void infonce_reduce_bf16(const float* a, int a_count, float wa, const float* b, int b_count,
                                               float wb, const float* c, int c_count, float wc, float factor,
                                               bf16* out) {
    infonce_reduce<bf16>(a, a_count, wa, b, b_count, wb, c, c_count, wc, factor, out);
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
