// Flash-style multi-head attention on packed projections, forward and backward (DESIGN 3).
//
// qkv is [batch, len, 3*width] with q, k and v blocks of `heads` heads of D = 32 or 64
// elements; out is [batch, len, width], lse [batch, heads, len] in fp32. A block works on one
// sequence (a batch row, or one of the varlen sequences packed into row 0: attention_seq.cuh).
// The masks (none, causal, key padding, both) always leave a query a prefix of visible keys of
// its sequence, so a mask is just the number of keys each query sees (`visible_keys`); a query
// that sees none gets a zero output and lse = -inf.
//
// Precision: the products run on tensor cores (mma.m16n8k16, bf16 operands, fp32
// accumulation); softmax statistics, outputs, lse and the gradients' accumulators are fp32.
// Only bf16 tensors take this path: f32 tensors run the exact SIMT kernels of
// attention_exact.cu, which share the delta kernel below (fp32 for both dtypes).
//
// Work split, for CLIP's short sequences (50, 77, 197): a block is 4 warps and one 64-row tile
// of one (batch, head); each warp owns 16 rows. Warps whose rows all lie past the sequence, or
// that see no key of the current tile (causal), skip its products. No S x S matrix is stored:
// the forward pass saves lse, and backward recomputes the probabilities from q, k and lse.
// Backward is two launches, deterministic (no atomics): D = rowsum(dO * O), then one launch in
// which a block either owns a key tile (dK and dV, looping over the query tiles) or a query tile
// (dQ, looping over the key tiles and recomputing S and dP: the price of owning dQ without
// atomics).
#include "attention_seq.cuh"
#include "tile.cuh"

namespace {

using namespace tile;

using attn::Sequence;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// The keys a run of rows [first, first + count) sees at most (0 when it starts past the end).
__device__ __forceinline__ int keys_of_rows(const Sequence& sq, int first, int count) {
    return first < sq.len ? sq.visible_keys(imin(first + count, sq.len) - 1) : 0;
}

// 1/sqrt(D) as the CPU reference rounds it.
template <int D>
__device__ __forceinline__ float head_scale() {
    static_assert(D == 32 || D == 64, "attention kernels exist for head dims 32 and 64");
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
__device__ __forceinline__ void mask_scores(float s[8][4], int k0, const int visible[2], float scale_log2) {
    const int t = threadIdx.x % 4;
    for (int j = 0; j < 8; ++j)
        for (int i = 0; i < 4; ++i) {
            const int key = k0 + 8 * j + 2 * t + i % 2;
            s[j][i] = key < visible[i / 2] ? s[j][i] * scale_log2 : -INFINITY;
        }
}

// Query-major probabilities recomputed from scores and the rows' lse (log2 units).
__device__ __forceinline__ void row_probabilities(float s[8][4], int k0, const int visible[2],
                                                  const float lse2[2], float scale_log2) {
    const int t = threadIdx.x % 4;
    for (int j = 0; j < 8; ++j)
        for (int i = 0; i < 4; ++i) {
            const int key = k0 + 8 * j + 2 * t + i % 2;
            s[j][i] = key < visible[i / 2] ? exp2f(s[j][i] * scale_log2 - lse2[i / 2]) : 0.0f;
        }
}

// Rows g and g+8 of a fragment: dS = P (dP - D_row), in place in dp.
__device__ __forceinline__ void row_score_gradient(float dp[8][4], const float p[8][4], const float delta[2]) {
    for (int j = 0; j < 8; ++j)
        for (int i = 0; i < 4; ++i) dp[j][i] = p[j][i] * (dp[j][i] - delta[i / 2]);
}

// Stages k and v of the key tile starting at token k0.
template <typename T, int D>
__device__ __forceinline__ void stage_keys(bf16* k_tile, bf16* v_tile, const T* qkv, const Head<D>& hd, int k0,
                                           int len) {
    constexpr int S = bf16_stride(D);
    const int keys = imin(ROWS, len - k0);
    stage_rows<D, S>(k_tile, qkv + hd.packed(1, k0), hd.token_stride, keys, D);
    stage_rows<D, S>(v_tile, qkv + hd.packed(2, k0), hd.token_stride, keys, D);
}

// Stages q and dO of the query tile starting at token q0.
template <typename T, int D>
__device__ __forceinline__ void stage_queries(bf16* q_tile, bf16* do_tile, const T* qkv, const T* dout,
                                              const Head<D>& hd, int q0, int len) {
    constexpr int S = bf16_stride(D);
    const int rows = imin(ROWS, len - q0);
    stage_rows<D, S>(q_tile, qkv + hd.packed(0, q0), hd.token_stride, rows, D);
    stage_rows<D, S>(do_tile, dout + hd.unpacked(q0), hd.width, rows, D);
}

// Writes the block's 64-row result (each warp's fragment times `scale`) to `rows` rows of dst
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

template <typename T, int D>
__device__ void attention_forward(const T* qkv, T* out, float* lse, const Sequence& sq, int heads) {
    constexpr int S = bf16_stride(D), F = f32_stride(D), TILE_ELEMS = ROWS * S;
    __shared__ __align__(16) bf16 q_tile[TILE_ELEMS];
    __shared__ __align__(16) bf16 kv_tile[2 * TILE_ELEMS];  // k, v; then the fp32 output staging
    static_assert(ROWS * F * sizeof(float) <= sizeof(kv_tile), "the output staging fits over k and v");
    if (static_cast<int>(blockIdx.y) * ROWS >= sq.len) return;  // a tile past a shorter packed sequence
    bf16* k_tile = kv_tile;
    bf16* v_tile = kv_tile + TILE_ELEMS;
    const Head<D> hd = Head<D>::of(sq, heads);
    const Lane p = lane_position();
    const int q0 = blockIdx.y * ROWS, rows = imin(ROWS, sq.len - q0);
    const int row0 = q0 + p.warp * WARP_ROWS;
    const int visible[2] = {sq.visible_keys(row0 + p.g), sq.visible_keys(row0 + p.g + 8)};
    const int block_keys = keys_of_rows(sq, q0, ROWS);
    const int warp_keys = keys_of_rows(sq, row0, WARP_ROWS);
    const float scale_log2 = head_scale<D>() * LOG2E;

    stage_rows<D, S>(q_tile, qkv + hd.packed(0, q0), hd.token_stride, rows, D);
    float o[D / 8][4];
    zero_fragment<D / 8>(o);
    RowStats st = empty_stats();
    for (int k0 = 0; k0 < block_keys; k0 += ROWS) {
        __syncthreads();  // the previous key tile has been read
        stage_keys(k_tile, v_tile, qkv, hd, k0, sq.len);
        __syncthreads();
        if (k0 >= warp_keys) continue;
        float s[8][4];
        zero_fragment<8>(s);
        mma_rows<D / 16, 8, S>(s, q_tile + p.warp * WARP_ROWS * S, k_tile);
        mask_scores(s, k0, visible, scale_log2);
        float rescale[2];
        softmax_step(s, st, rescale);
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
    store_tile<T, D>(out + hd.unpacked(q0), hd.width, reinterpret_cast<float*>(kv_tile), o, 1.0f, rows);
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

// Shared memory of a backward block: the two tiles it keeps for its whole loop (q and dO for
// dQ, k and v for dK and dV), the two it streams (k and v, or q and dO; then the fp32 output
// staging) and, for dK/dV, the per-query values of the streamed query tile.
template <int D>
struct BackwardSmem {
    static constexpr int S = bf16_stride(D), F = f32_stride(D), TILE_ELEMS = ROWS * S;
    bf16 kept[2 * TILE_ELEMS];
    bf16 streamed[2 * TILE_ELEMS];
    float lse2[ROWS];
    float delta[ROWS];
    int visible[ROWS];
    static_assert(ROWS * F * sizeof(float) <= sizeof(streamed), "the output staging fits over the streamed tiles");
};

// dQ for one 64-query tile: dQ = scale * sum over key tiles of dS K, dS = P (dP - D), dP = dO V^T.
template <typename T, int D>
__device__ __forceinline__ void backward_dq(BackwardSmem<D>& sm, const T* qkv, const T* dout, const float* lse,
                                            const float* delta, T* dqkv, const Sequence& sq, int heads) {
    constexpr int S = BackwardSmem<D>::S, TILE_ELEMS = BackwardSmem<D>::TILE_ELEMS;
    bf16 *q_tile = sm.kept, *do_tile = sm.kept + TILE_ELEMS;
    bf16 *k_tile = sm.streamed, *v_tile = sm.streamed + TILE_ELEMS;
    const Head<D> hd = Head<D>::of(sq, heads);
    const Lane p = lane_position();
    const int q0 = blockIdx.y * ROWS, rows = imin(ROWS, sq.len - q0);
    const int row0 = q0 + p.warp * WARP_ROWS;
    int visible[2];
    float lse2[2], row_delta[2];
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + p.g + 8 * half;
        visible[half] = sq.visible_keys(row);
        const size_t at = sq.stat0 + row;
        lse2[half] = visible[half] > 0 ? lse[at] * LOG2E : 0.0f;
        row_delta[half] = visible[half] > 0 ? delta[at] : 0.0f;
    }
    const int block_keys = keys_of_rows(sq, q0, ROWS);
    const int warp_keys = keys_of_rows(sq, row0, WARP_ROWS);
    const float scale_log2 = head_scale<D>() * LOG2E;

    stage_queries(q_tile, do_tile, qkv, dout, hd, q0, sq.len);
    float dq[D / 8][4];
    zero_fragment<D / 8>(dq);
    for (int k0 = 0; k0 < block_keys; k0 += ROWS) {
        __syncthreads();
        stage_keys(k_tile, v_tile, qkv, hd, k0, sq.len);
        __syncthreads();
        if (k0 >= warp_keys) continue;
        float s[8][4], dp[8][4];
        zero_fragment<8>(s);
        mma_rows<D / 16, 8, S>(s, q_tile + p.warp * WARP_ROWS * S, k_tile);
        row_probabilities(s, k0, visible, lse2, scale_log2);
        zero_fragment<8>(dp);
        mma_rows<D / 16, 8, S>(dp, do_tile + p.warp * WARP_ROWS * S, v_tile);
        row_score_gradient(dp, s, row_delta);
        mma_fragment<D / 8, S>(dq, dp, k_tile);
    }
    float* stage = reinterpret_cast<float*>(sm.streamed);
    store_tile<T, D>(dqkv + hd.packed(0, q0), hd.token_stride, stage, dq, head_scale<D>(), rows);
}

// dK and dV for one 64-key tile, looping over the query tiles that see it. Fragments are
// key-major here: rows are the warp's keys, columns the queries q0 + 8j + 2t + e.
template <typename T, int D>
__device__ __forceinline__ void backward_dkdv(BackwardSmem<D>& sm, const T* qkv, const T* dout, const float* lse,
                                              const float* delta, T* dqkv, const Sequence& sq, int heads) {
    constexpr int S = BackwardSmem<D>::S, TILE_ELEMS = BackwardSmem<D>::TILE_ELEMS;
    bf16 *k_tile = sm.kept, *v_tile = sm.kept + TILE_ELEMS;
    bf16 *q_tile = sm.streamed, *do_tile = sm.streamed + TILE_ELEMS;
    const Head<D> hd = Head<D>::of(sq, heads);
    const Lane p = lane_position();
    const int k0 = blockIdx.y * ROWS, keys = imin(ROWS, sq.len - k0);
    const int warp_key0 = k0 + p.warp * WARP_ROWS;
    const int my_keys[2] = {warp_key0 + p.g, warp_key0 + p.g + 8};
    const float scale_log2 = head_scale<D>() * LOG2E;
    // The last query sees the most keys; queries before k0 see none of this tile under the causal mask.
    const bool seen = sq.visible_keys(sq.len - 1) > k0;
    const int q_begin = !seen ? sq.len : sq.causal ? k0 : 0;

    stage_keys(k_tile, v_tile, qkv, hd, k0, sq.len);
    float dk[D / 8][4], dv[D / 8][4];
    zero_fragment<D / 8>(dk);
    zero_fragment<D / 8>(dv);
    for (int q0 = q_begin; q0 < sq.len; q0 += ROWS) {
        __syncthreads();
        stage_queries(q_tile, do_tile, qkv, dout, hd, q0, sq.len);
        for (int i = threadIdx.x; i < ROWS; i += blockDim.x) {
            const int visible = sq.visible_keys(q0 + i);
            const size_t at = sq.stat0 + q0 + i;
            sm.visible[i] = visible;
            sm.lse2[i] = visible > 0 ? lse[at] * LOG2E : 0.0f;
            sm.delta[i] = visible > 0 ? delta[at] : 0.0f;
        }
        __syncthreads();
        if (keys_of_rows(sq, q0, ROWS) <= warp_key0) continue;
        float s[8][4], dp[8][4];
        zero_fragment<8>(s);
        mma_rows<D / 16, 8, S>(s, k_tile + p.warp * WARP_ROWS * S, q_tile);
        for (int j = 0; j < 8; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = 8 * j + 2 * p.t + i % 2;
                const bool shown = my_keys[i / 2] < sm.visible[col];
                s[j][i] = shown ? exp2f(s[j][i] * scale_log2 - sm.lse2[col]) : 0.0f;
            }
        mma_fragment<D / 8, S>(dv, s, do_tile);
        zero_fragment<8>(dp);
        mma_rows<D / 16, 8, S>(dp, v_tile + p.warp * WARP_ROWS * S, do_tile);
        for (int j = 0; j < 8; ++j)
            for (int i = 0; i < 4; ++i) dp[j][i] = s[j][i] * (dp[j][i] - sm.delta[8 * j + 2 * p.t + i % 2]);
        mma_fragment<D / 8, S>(dk, dp, q_tile);
    }
    float* stage = reinterpret_cast<float*>(sm.streamed);
    store_tile<T, D>(dqkv + hd.packed(1, k0), hd.token_stride, stage, dk, head_scale<D>(), keys);
    store_tile<T, D>(dqkv + hd.packed(2, k0), hd.token_stride, stage, dv, 1.0f, keys);
}

// Grid z = 0: dK and dV of key tile y; z = 1: dQ of query tile y. Each writes its own part of
// dqkv, so one launch covers both without any accumulation across blocks.
template <typename T, int D>
__device__ void attention_backward(const T* qkv, const T* dout, const float* lse, const float* delta, T* dqkv,
                                   const Sequence& sq, int heads) {
    __shared__ __align__(16) BackwardSmem<D> sm;
    if (static_cast<int>(blockIdx.y) * ROWS >= sq.len) return;  // a tile past a shorter packed sequence
    if (blockIdx.z == 0) {
        backward_dkdv<T, D>(sm, qkv, dout, lse, delta, dqkv, sq, heads);
    } else {
        backward_dq<T, D>(sm, qkv, dout, lse, delta, dqkv, sq, heads);
    }
}

}  // namespace

// Grid (sequences * heads, ceil(longest sequence / 64)), 128 threads; offsets (varlen packing)
// and key_lengths may be null.
extern "C" __global__ void __launch_bounds__(128)
    attention_fwd_d64_bf16(const bf16* qkv, bf16* out, float* lse, int len, int heads, const int* offsets,
                           const int* key_lengths, int causal) {
    const Sequence sq = attn::sequence_of_block(len, heads, offsets, key_lengths, causal);
    attention_forward<bf16, 64>(qkv, out, lse, sq, heads);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_fwd_d32_bf16(const bf16* qkv, bf16* out, float* lse, int len, int heads, const int* offsets,
                           const int* key_lengths, int causal) {
    const Sequence sq = attn::sequence_of_block(len, heads, offsets, key_lengths, causal);
    attention_forward<bf16, 32>(qkv, out, lse, sq, heads);
}

// Grid ceil(batch * len * heads / 8), 256 threads.
extern "C" __global__ void attention_bwd_delta_f32(const float* out, const float* dout, float* delta, int len,
                                                   int heads, int head_dim, int total_rows) {
    attention_delta<float>(out, dout, delta, len, heads, head_dim, total_rows);
}
extern "C" __global__ void attention_bwd_delta_bf16(const bf16* out, const bf16* dout, float* delta, int len,
                                                    int heads, int head_dim, int total_rows) {
    attention_delta<bf16>(out, dout, delta, len, heads, head_dim, total_rows);
}

// Grid (sequences * heads, ceil(longest sequence / 64), 2), 128 threads. The bound of 2 blocks
// per SM lets ptxas hold dK, dV and two score fragments (~200 registers) without spilling.
extern "C" __global__ void __launch_bounds__(128, 2)
    attention_bwd_d64_bf16(const bf16* qkv, const bf16* dout, const float* lse, const float* delta, bf16* dqkv,
                           int len, int heads, const int* offsets, const int* key_lengths, int causal) {
    const Sequence sq = attn::sequence_of_block(len, heads, offsets, key_lengths, causal);
    attention_backward<bf16, 64>(qkv, dout, lse, delta, dqkv, sq, heads);
}
extern "C" __global__ void __launch_bounds__(128, 2)
    attention_bwd_d32_bf16(const bf16* qkv, const bf16* dout, const float* lse, const float* delta, bf16* dqkv,
                           int len, int heads, const int* offsets, const int* key_lengths, int causal) {
    const Sequence sq = attn::sequence_of_block(len, heads, offsets, key_lengths, causal);
    attention_backward<bf16, 32>(qkv, dout, lse, delta, dqkv, sq, heads);
}
