// Flash-style multi-head attention on packed projections, forward and backward (DESIGN 3).
//
// qkv is [batch, len, 3*width] with q, k and v blocks of `heads` heads of D = 32 or 64
// elements; out is [batch, len, width], lse [batch, heads, len] in fp32. A block works on one
// sequence (a batch row, or one of the varlen sequences packed into row 0: attention_seq.cuh).
// Every mask (segments, causal, key padding, together) leaves a query one contiguous range of
// visible keys of its sequence (`attn::KeyRange`), so a mask is just each query's range; a query
// that sees none gets a zero output and lse = -inf.
//
// Precision: the products run on tensor cores (mma.m16n8k16, bf16 operands, fp32
// accumulation); softmax statistics, outputs, lse and the gradients' accumulators are fp32.
// Only bf16 tensors take this path: f32 tensors run the exact SIMT kernels of
// attention_exact.cu, which share the delta kernel below (fp32 for both dtypes).
//
// Work split, for CLIP's short sequences (50, 77, 197), where a generic 64 x 64 tiling computes
// up to 2.8x the useful products (77 -> 128 x 128): a block owns a tile of ROWS rows of one
// (sequence, head), 16 per warp, and streams the other side in tiles of COLS rows. Every kernel
// comes in the shapes ROWS, COLS in {64, 32}, entry points attention_{fwd,bwd}_d<D>_q<ROWS>k<COLS>_bf16;
// src/backend/gpu/attention.rs picks one per call (77 pads to 96 x 96 with 32 x 32 tiles, 197 to
// 224 x 224). Warps whose rows all lie past the sequence, or that see no key of the current tile
// (causal, segments), skip its products. No S x S matrix is stored:
// the forward pass saves lse, and backward recomputes the probabilities from q, k and lse.
// Backward is two launches, deterministic (no atomics): D = rowsum(dO * O), then one launch in
// which a block either owns a tile of ROWS keys (dK and dV, looping over query tiles of COLS) or
// of ROWS queries (dQ, looping over key tiles of COLS and recomputing S and dP: the price of
// owning dQ without atomics).
#include "attention_seq.cuh"
#include "tile.cuh"

namespace {

// The tile helpers by name rather than `using namespace tile`: tile::ROWS, the 64-row block of
// the other flash kernels, must not stand in for a block shape that is a parameter here.
using tile::bf16_stride;
using tile::empty_stats;
using tile::f32_stride;
using tile::finish_rows;
using tile::fragment_to_stage;
using tile::Lane;
using tile::lane_position;
using tile::LOG2E;
using tile::mma_fragment;
using tile::mma_rows;
using tile::RowStats;
using tile::softmax_step;
using tile::stage_rows;
using tile::store_rows;
using tile::WARP_ROWS;
using tile::zero_fragment;

using attn::KeyRange;
using attn::Sequence;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// The shape of a kernel instance: a block owns ROWS rows (16 per warp: queries, or keys for dK
// and dV) and streams the other side COLS rows at a time, so score fragments are 16 x COLS.
template <int HEAD_DIM, int OWN_ROWS, int STREAMED_COLS>
struct Tiles {
    static constexpr int D = HEAD_DIM, ROWS = OWN_ROWS, COLS = STREAMED_COLS;
    static_assert(D == 32 || D == 64, "attention kernels exist for head dims 32 and 64");
    // At most 64 rows: tile::store_rows writes up to tile::ROWS rows. COLS in steps of 16: the
    // probabilities feed the next product as A fragments of 16 columns.
    static_assert(ROWS % WARP_ROWS == 0 && ROWS <= tile::ROWS, "own tiles are 1 to 4 warps of 16 rows");
    static_assert(COLS % 16 == 0 && COLS <= tile::ROWS, "streamed tiles are 16 to 64 rows in steps of 16");
    static constexpr int N8 = COLS / 8;  // n-tiles of a score fragment
    static constexpr int S = bf16_stride(D), F = f32_stride(D);
};

// 1/sqrt(D) as the CPU reference rounds it.
template <int D>
__device__ __forceinline__ float head_scale() {
    return D == 64 ? 0.125f : 0.17677669529663687f;
}

// Where the block's (sequence, head) lives in the packed tensors.
template <int D>
struct Head {
    int width;
    size_t token_stride;  // elements from one token's qkv row to the next
    size_t token0;        // the sequence's first token
    int h;

    __device__ static Head of(const Sequence& sq, int heads) {
        const int width = heads * D;
        return Head{width, 3 * static_cast<size_t>(width), sq.token0, sq.head};
    }
    // Element 0 of block `which` (0 q, 1 k, 2 v) of this head at `token`, in qkv or dqkv.
    __device__ size_t packed(int which, int token) const {
        return (token0 + token) * token_stride + which * width + h * D;
    }
    // Element 0 of this head at `token` in out or dout.
    __device__ size_t unpacked(int token) const { return (token0 + token) * width + h * D; }
};

template <int N8>
__device__ __forceinline__ void scale_rows(float acc[N8][4], const float factor[2]) {
    for (int j = 0; j < N8; ++j)
        for (int i = 0; i < 4; ++i) acc[j][i] *= factor[i / 2];
}

// Query-major scores (rows: the lane's two queries; columns: keys k0 + 8j + 2t + e) scaled into
// log2 units, -inf where the key is hidden from the row.
template <int N8>
__device__ __forceinline__ void mask_scores(float (&s)[N8][4], int k0, const KeyRange visible[2],
                                            float scale_log2) {
    const int t = threadIdx.x % 4;
    for (int j = 0; j < N8; ++j)
        for (int i = 0; i < 4; ++i) {
            const int key = k0 + 8 * j + 2 * t + i % 2;
            s[j][i] = visible[i / 2].has(key) ? s[j][i] * scale_log2 : -INFINITY;
        }
}

// Query-major probabilities recomputed from scores and the rows' lse (log2 units).
template <int N8>
__device__ __forceinline__ void row_probabilities(float (&s)[N8][4], int k0, const KeyRange visible[2],
                                                  const float lse2[2], float scale_log2) {
    const int t = threadIdx.x % 4;
    for (int j = 0; j < N8; ++j)
        for (int i = 0; i < 4; ++i) {
            const int key = k0 + 8 * j + 2 * t + i % 2;
            s[j][i] = visible[i / 2].has(key) ? exp2f(s[j][i] * scale_log2 - lse2[i / 2]) : 0.0f;
        }
}

// Rows g and g+8 of a fragment: dS = P (dP - D_row), in place in dp.
template <int N8>
__device__ __forceinline__ void row_score_gradient(float (&dp)[N8][4], const float (&p)[N8][4],
                                                   const float delta[2]) {
    for (int j = 0; j < N8; ++j)
        for (int i = 0; i < 4; ++i) dp[j][i] = p[j][i] * (dp[j][i] - delta[i / 2]);
}

// Stages k and v of the TILE_ROWS keys starting at token k0.
template <int TILE_ROWS, typename T, int D>
__device__ __forceinline__ void stage_keys(bf16* k_tile, bf16* v_tile, const T* qkv, const Head<D>& hd, int k0,
                                           int len) {
    constexpr int S = bf16_stride(D);
    const int keys = imin(TILE_ROWS, len - k0);
    stage_rows<D, S, TILE_ROWS>(k_tile, qkv + hd.packed(1, k0), hd.token_stride, keys, D);
    stage_rows<D, S, TILE_ROWS>(v_tile, qkv + hd.packed(2, k0), hd.token_stride, keys, D);
}

// Stages q and dO of the TILE_ROWS queries starting at token q0.
template <int TILE_ROWS, typename T, int D>
__device__ __forceinline__ void stage_queries(bf16* q_tile, bf16* do_tile, const T* qkv, const T* dout,
                                              const Head<D>& hd, int q0, int len) {
    constexpr int S = bf16_stride(D);
    const int rows = imin(TILE_ROWS, len - q0);
    stage_rows<D, S, TILE_ROWS>(q_tile, qkv + hd.packed(0, q0), hd.token_stride, rows, D);
    stage_rows<D, S, TILE_ROWS>(do_tile, dout + hd.unpacked(q0), hd.width, rows, D);
}

// Writes the block's result (each warp's 16-row fragment times `scale`) to `rows` rows of dst
// through the fp32 staging area, with 128-bit stores. Every thread of the block calls it.
template <typename T, int D>
__device__ __forceinline__ void store_tile(T* dst, size_t dst_stride, float* stage, const float acc[D / 8][4],
                                           float scale, int rows) {
    constexpr int F = f32_stride(D);
    __syncthreads();  // the staging area (operand tiles until now) is free
    fragment_to_stage<D / 8>(stage + (threadIdx.x / 32) * WARP_ROWS * F, F, acc, scale);
    __syncthreads();
    store_rows<D, F>(dst, dst_stride, stage, rows, D);
}

template <typename T, typename K>
__device__ void attention_forward(const T* qkv, T* out, float* lse, const Sequence& sq, int heads) {
    constexpr int D = K::D, S = K::S, ROWS = K::ROWS, COLS = K::COLS;
    // q, then k and v; after the loop, the fp32 output staging over all three.
    __shared__ __align__(16) bf16 smem[(ROWS + 2 * COLS) * S];
    static_assert(ROWS * K::F * sizeof(float) <= sizeof(smem), "the output staging fits over q, k and v");
    if (static_cast<int>(blockIdx.y) * ROWS >= sq.len) return;  // a tile past a shorter packed sequence
    bf16* q_tile = smem;
    bf16* k_tile = smem + ROWS * S;
    bf16* v_tile = k_tile + COLS * S;
    const Head<D> hd = Head<D>::of(sq, heads);
    const Lane p = lane_position();
    const int q0 = blockIdx.y * ROWS, rows = imin(ROWS, sq.len - q0);
    const int row0 = q0 + p.warp * WARP_ROWS;
    const KeyRange visible[2] = {sq.keys_of(row0 + p.g), sq.keys_of(row0 + p.g + 8)};
    const KeyRange block_keys = sq.keys_of_rows(q0, ROWS);
    const KeyRange warp_keys = sq.keys_of_rows(row0, WARP_ROWS);
    const float scale_log2 = head_scale<D>() * LOG2E;

    stage_rows<D, S, ROWS>(q_tile, qkv + hd.packed(0, q0), hd.token_stride, rows, D);
    float o[D / 8][4];
    zero_fragment<D / 8>(o);
    RowStats st = empty_stats();
    for (int k0 = block_keys.begin; k0 < block_keys.end; k0 += COLS) {
        __syncthreads();  // the previous key tile has been read
        stage_keys<COLS>(k_tile, v_tile, qkv, hd, k0, sq.len);
        __syncthreads();
        if (!warp_keys.meets(k0, COLS)) continue;
        float s[K::N8][4];
        zero_fragment<K::N8>(s);
        mma_rows<D / 16, K::N8, S>(s, q_tile + p.warp * WARP_ROWS * S, k_tile);
        mask_scores(s, k0, visible, scale_log2);
        float rescale[2];
        softmax_step<K::N8>(s, st, rescale);
        scale_rows<D / 8>(o, rescale);
        mma_fragment<D / 8, S>(o, s, v_tile);
    }
    float row_lse[2], inv_sum[2];
    finish_rows(st, row_lse, inv_sum);
    scale_rows<D / 8>(o, inv_sum);
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + p.g + 8 * half;
        if (p.t == 0 && row < sq.len) lse[sq.stat0 + row] = row_lse[half];
    }
    store_tile<T, D>(out + hd.unpacked(q0), hd.width, reinterpret_cast<float*>(smem), o, 1.0f, rows);
}

// D_i = <dO_i, O_i> for every (token, head) row: one warp per row, [batch, heads, len] out.
template <typename T>
__device__ void attention_delta(const T* out, const T* dout, float* delta, int len, int heads, int head_dim,
                                int total_rows) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    float acc = 0.0f;
    if (row < total_rows) {
        const size_t base = static_cast<size_t>(row) * head_dim;
        for (int d = lane; d < head_dim; d += 32) acc += to_float(out[base + d]) * to_float(dout[base + d]);
    }
    acc = warp_sum(acc);
    if (lane == 0 && row < total_rows) {
        const int b = row / (len * heads), i = (row / heads) % len, h = row % heads;
        delta[(static_cast<size_t>(b) * heads + h) * len + i] = acc;
    }
}

// Shared memory of a backward block: the two tiles of its own rows, kept for its whole loop (q and
// dO for dQ, k and v for dK and dV; then the fp32 output staging), the two it streams (k and v,
// or q and dO) and, for dK/dV, the per-query values of the streamed query tile.
template <typename K>
struct BackwardSmem {
    bf16 kept[2 * K::ROWS * K::S];
    bf16 streamed[2 * K::COLS * K::S];
    float lse2[K::COLS];
    float delta[K::COLS];
    KeyRange visible[K::COLS];
    static_assert(K::ROWS * K::F * sizeof(float) <= sizeof(kept), "the output staging fits over the kept tiles");

    __device__ bf16* kept_tile(int i) { return kept + i * K::ROWS * K::S; }
    __device__ bf16* streamed_tile(int i) { return streamed + i * K::COLS * K::S; }
    __device__ float* stage() { return reinterpret_cast<float*>(kept); }
};

// Where both halves of a backward block start: the head, the lane, the block's own rows first ..
// first + count - 1 (queries for dQ, keys for dK and dV) and the first of the warp's 16 rows.
template <typename K>
struct OwnRows {
    Head<K::D> hd;
    Lane p;
    int first, count, warp_first;

    __device__ static OwnRows of(const Sequence& sq, int heads) {
        const Lane p = lane_position();
        const int first = blockIdx.y * K::ROWS;
        return OwnRows{Head<K::D>::of(sq, heads), p, first, imin(K::ROWS, sq.len - first), first + p.warp * WARP_ROWS};
    }

    // Writes the block's gradient of qkv block `which` (0 q, 1 k, 2 v) for its own rows.
    template <typename T>
    __device__ void store(BackwardSmem<K>& sm, T* dqkv, int which, const float acc[K::D / 8][4], float scale) const {
        store_tile<T, K::D>(dqkv + hd.packed(which, first), hd.token_stride, sm.stage(), acc, scale, count);
    }
};

// What backward needs of query q: the keys it sees, its lse in log2 units and D; both 0 for a
// query that sees no key (its lse is -inf).
struct QueryStats {
    KeyRange visible;
    float lse2, delta;
};

__device__ __forceinline__ QueryStats query_stats(const Sequence& sq, const float* lse, const float* delta, int q) {
    const KeyRange visible = sq.keys_of(q);
    const size_t at = sq.stat0 + q;
    return !visible.empty() ? QueryStats{visible, lse[at] * LOG2E, delta[at]} : QueryStats{visible, 0.0f, 0.0f};
}

// dQ for the block's own queries: dQ = scale * sum over key tiles of dS K, dS = P (dP - D),
// dP = dO V^T.
template <typename T, typename K>
__device__ __forceinline__ void backward_dq(BackwardSmem<K>& sm, const T* qkv, const T* dout, const float* lse,
                                            const float* delta, T* dqkv, const Sequence& sq, int heads) {
    constexpr int D = K::D, S = K::S;
    const OwnRows<K> own = OwnRows<K>::of(sq, heads);
    const Lane p = own.p;
    bf16 *q_tile = sm.kept_tile(0), *do_tile = sm.kept_tile(1);
    bf16 *k_tile = sm.streamed_tile(0), *v_tile = sm.streamed_tile(1);
    KeyRange visible[2];
    float lse2[2], row_delta[2];
    for (int half = 0; half < 2; ++half) {
        const QueryStats q = query_stats(sq, lse, delta, own.warp_first + p.g + 8 * half);
        visible[half] = q.visible;
        lse2[half] = q.lse2;
        row_delta[half] = q.delta;
    }
    const KeyRange block_keys = sq.keys_of_rows(own.first, K::ROWS);
    const KeyRange warp_keys = sq.keys_of_rows(own.warp_first, WARP_ROWS);
    const float scale_log2 = head_scale<D>() * LOG2E;

    stage_queries<K::ROWS>(q_tile, do_tile, qkv, dout, own.hd, own.first, sq.len);
    float dq[D / 8][4];
    zero_fragment<D / 8>(dq);
    for (int k0 = block_keys.begin; k0 < block_keys.end; k0 += K::COLS) {
        __syncthreads();
        stage_keys<K::COLS>(k_tile, v_tile, qkv, own.hd, k0, sq.len);
        __syncthreads();
        if (!warp_keys.meets(k0, K::COLS)) continue;
        float s[K::N8][4], dp[K::N8][4];
        zero_fragment<K::N8>(s);
        mma_rows<D / 16, K::N8, S>(s, q_tile + p.warp * WARP_ROWS * S, k_tile);
        row_probabilities(s, k0, visible, lse2, scale_log2);
        zero_fragment<K::N8>(dp);
        mma_rows<D / 16, K::N8, S>(dp, do_tile + p.warp * WARP_ROWS * S, v_tile);
        row_score_gradient(dp, s, row_delta);
        mma_fragment<D / 8, S>(dq, dp, k_tile);
    }
    own.store(sm, dqkv, 0, dq, head_scale<D>());
}

// dK and dV for the block's own keys, looping over the query tiles that see them. Fragments are
// key-major here: rows are the warp's keys, columns the queries q0 + 8j + 2t + e.
template <typename T, typename K>
__device__ __forceinline__ void backward_dkdv(BackwardSmem<K>& sm, const T* qkv, const T* dout, const float* lse,
                                              const float* delta, T* dqkv, const Sequence& sq, int heads) {
    constexpr int D = K::D, S = K::S;
    const OwnRows<K> own = OwnRows<K>::of(sq, heads);
    const Lane p = own.p;
    bf16 *k_tile = sm.kept_tile(0), *v_tile = sm.kept_tile(1);
    bf16 *q_tile = sm.streamed_tile(0), *do_tile = sm.streamed_tile(1);
    const int my_keys[2] = {own.warp_first + p.g, own.warp_first + p.g + 8};
    const float scale_log2 = head_scale<D>() * LOG2E;
    // Whether any query sees an own key; under the causal mask, queries before the first own key
    // see none of them.
    const bool seen = sq.keys_of_rows(0, sq.len).meets(own.first, K::ROWS);
    const int q_begin = !seen ? sq.len : sq.causal ? own.first : 0;

    stage_keys<K::ROWS>(k_tile, v_tile, qkv, own.hd, own.first, sq.len);
    float dk[D / 8][4], dv[D / 8][4];
    zero_fragment<D / 8>(dk);
    zero_fragment<D / 8>(dv);
    for (int q0 = q_begin; q0 < sq.len; q0 += K::COLS) {
        __syncthreads();
        stage_queries<K::COLS>(q_tile, do_tile, qkv, dout, own.hd, q0, sq.len);
        for (int i = threadIdx.x; i < K::COLS; i += blockDim.x) {
            const QueryStats q = query_stats(sq, lse, delta, q0 + i);
            sm.visible[i] = q.visible;
            sm.lse2[i] = q.lse2;
            sm.delta[i] = q.delta;
        }
        __syncthreads();
        if (!sq.keys_of_rows(q0, K::COLS).meets(own.warp_first, WARP_ROWS)) continue;
        float s[K::N8][4], dp[K::N8][4];
        zero_fragment<K::N8>(s);
        mma_rows<D / 16, K::N8, S>(s, k_tile + p.warp * WARP_ROWS * S, q_tile);
        for (int j = 0; j < K::N8; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = 8 * j + 2 * p.t + i % 2;
                const bool shown = sm.visible[col].has(my_keys[i / 2]);
                s[j][i] = shown ? exp2f(s[j][i] * scale_log2 - sm.lse2[col]) : 0.0f;
            }
        mma_fragment<D / 8, S>(dv, s, do_tile);
        zero_fragment<K::N8>(dp);
        mma_rows<D / 16, K::N8, S>(dp, v_tile + p.warp * WARP_ROWS * S, do_tile);
        for (int j = 0; j < K::N8; ++j)
            for (int i = 0; i < 4; ++i) dp[j][i] = s[j][i] * (dp[j][i] - sm.delta[8 * j + 2 * p.t + i % 2]);
        mma_fragment<D / 8, S>(dk, dp, q_tile);
    }
    own.store(sm, dqkv, 1, dk, head_scale<D>());
    own.store(sm, dqkv, 2, dv, 1.0f);
}

// Grid z = 0: dK and dV of the y-th tile of keys; z = 1: dQ of the y-th tile of queries. Each
// writes its own part of dqkv, so one launch covers both without any accumulation across blocks.
template <typename T, typename K>
__device__ void attention_backward(const T* qkv, const T* dout, const float* lse, const float* delta, T* dqkv,
                                   const Sequence& sq, int heads) {
    __shared__ __align__(16) BackwardSmem<K> sm;
    if (static_cast<int>(blockIdx.y) * K::ROWS >= sq.len) return;  // a tile past a shorter packed sequence
    if (blockIdx.z == 0) {
        backward_dkdv<T, K>(sm, qkv, dout, lse, delta, dqkv, sq, heads);
    } else {
        backward_dq<T, K>(sm, qkv, dout, lse, delta, dqkv, sq, heads);
    }
}

}  // namespace

// Grid ceil(batch * len * heads / 8), 256 threads.
#define ATTENTION_DELTA_ENTRY_POINT(T, SUFFIX)                                                                       \
    extern "C" __global__ void attention_bwd_delta_##SUFFIX(const T* out, const T* dout, float* delta, int len,      \
                                                            int heads, int head_dim, int total_rows) {             \
        attention_delta<T>(out, dout, delta, len, heads, head_dim, total_rows);                                      \
    }
ATTENTION_DELTA_ENTRY_POINT(float, f32)
ATTENTION_DELTA_ENTRY_POINT(bf16, bf16)

// The bf16 kernels of head dim D with ROWS-row own tiles and COLS-row streamed tiles, 2 * ROWS
// threads (16 rows a warp). Forward grid (sequences * heads, ceil(longest sequence / ROWS)),
// backward the same with z = 2; offsets (varlen packing) and key_lengths may be null; the mask
// parameters are attention_seq.cuh's. The backward bound of 256 threads per SM lets ptxas hold dK,
// dV and two score fragments (~200 registers at 64 x 64) without spilling.
#define ATTENTION_ENTRY_POINTS(D, ROWS, COLS)                                                                        \
    extern "C" __global__ void __launch_bounds__(2 * ROWS) attention_fwd_d##D##_q##ROWS##k##COLS##_bf16(             \
        const bf16* qkv, bf16* out, float* lse, int len, int heads, ATTENTION_MASK_PARAMS) {                         \
        attention_forward<bf16, Tiles<D, ROWS, COLS>>(qkv, out, lse, ATTENTION_SEQUENCE, heads);                     \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(2 * ROWS, 256 / (2 * ROWS))                                         \
        attention_bwd_d##D##_q##ROWS##k##COLS##_bf16(const bf16* qkv, const bf16* dout, const float* lse,            \
                                                     const float* delta, bf16* dqkv, int len, int heads,             \
                                                     ATTENTION_MASK_PARAMS) {                                        \
        attention_backward<bf16, Tiles<D, ROWS, COLS>>(qkv, dout, lse, delta, dqkv, ATTENTION_SEQUENCE, heads);      \
    }

// Every tile shape the Rust side may pick (AttnTiles::ALL there), for one head dim.
#define ATTENTION_TILE_SHAPES(D)         \
    ATTENTION_ENTRY_POINTS(D, 64, 64)    \
    ATTENTION_ENTRY_POINTS(D, 64, 32)    \
    ATTENTION_ENTRY_POINTS(D, 32, 64)    \
    ATTENTION_ENTRY_POINTS(D, 32, 32)
ATTENTION_TILE_SHAPES(32)
ATTENTION_TILE_SHAPES(64)
