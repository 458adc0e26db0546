// Exact fp32 multi-head attention on packed projections, forward and backward: the kernels the
// GPU backend runs for f32 tensors (bf16 tensors take the tensor-core kernels of attention.cu,
// whose bf16 operands would put f32 training a bf16 rounding away from the CPU reference).
//
// The contract is attention.cu's and the CPU reference's: qkv [batch, len, 3*width] holds q, k
// and v blocks of `heads` heads, out is [batch, len, width], lse [batch, heads, len]; a block
// works on one sequence (a batch row, or a varlen sequence packed into row 0:
// attention_seq.cuh), where every mask leaves a query one contiguous range of visible keys, and a
// query that sees none gets a zero output and lse = -inf. Any head dim up to 128: a lane owns columns lane + 32c of a row, c < C, and the
// kernels are instantiated for C = 1..4 (head dims up to 32, 64, 96, 128).
//
// Precision: fp32 FMAs on CUDA cores throughout and the CPU reference's formulas (a score is
// the dot product over the head dim in column order, times the scale; backward recomputes
// probabilities from lse; a gradient row sums its terms in ascending key or query order), so
// the results agree with the CPU to f32 rounding (about 1e-6 of a tensor's scale).
//
// Work split (SIMT): a block is 8 warps owning 8 consecutive rows of one (sequence, head), one
// row per warp. The rows of the other side are staged in shared memory 32 at a time, one per lane:
// lane l scores staged row l against the warp's row, the warp publishes the 32 weights, then
// each lane accumulates its columns over the staged rows.
// - forward: a warp per query, online softmax over chunks of keys.
// - backward, after D = rowsum(dO * O) (attention.cu's delta kernel), one launch: grid z = 1 is a
//   warp per query computing dQ, z = 0 a warp per key computing dK and dV over the queries that
//   see it. Every warp writes only its own row: deterministic, no atomics, no S x S matrix.
#include "attention_seq.cuh"

namespace {

constexpr int WARPS = 8;   // rows per block
constexpr int CHUNK = 32;  // rows staged per step, one per lane
constexpr int MAX_HEAD_DIM = 128;
// Odd, so lane l reading column d of staged row l hits bank (l + d) % 32: no conflicts.
constexpr int STRIDE = MAX_HEAD_DIM + 1;

using Chunk = float[CHUNK][STRIDE];

__device__ __forceinline__ int min_of(int a, int b) { return a < b ? a : b; }

// This block's sequence and head (attention_seq.cuh), its first row (query or key) in the
// sequence, and where the head's rows live in the packed tensors.
struct Block {
    attn::Sequence sq;
    int first;
    int head_dim;
    float scale;     // 1/sqrt(head_dim), rounded as the CPU reference rounds it
    size_t qkv_row;  // elements from one token's qkv row to the next
    size_t out_row;  // ... and from one token's out row to the next (the width)

    // Element 0 of block `which` (0 q, 1 k, 2 v) of this head at `token`, in qkv or dqkv.
    __device__ size_t packed(int which, int token) const {
        return (sq.token0 + token) * qkv_row + which * out_row + sq.head * head_dim;
    }
    // Element 0 of this head at `token`, in out or dout.
    __device__ size_t unpacked(int token) const { return (sq.token0 + token) * out_row + sq.head * head_dim; }
    // Index of (head, token `row`) in lse and delta.
    __device__ size_t stat(int row) const { return sq.stat0 + row; }
};

__device__ __forceinline__ Block block_of(const attn::Sequence& sq, int heads, int head_dim, float scale) {
    const size_t width = static_cast<size_t>(heads) * head_dim;
    return Block{sq,
                 static_cast<int>(blockIdx.y) * WARPS,
                 head_dim,
                 scale,
                 3 * width,
                 width};
}

// Rows [0, rows) of `cols` floats, consecutive rows `src_stride` apart, into `dst`. Every thread
// of the block takes part; 128-bit loads where the rows allow them.
__device__ __forceinline__ void stage_rows(Chunk& dst, const float* src, size_t src_stride, int rows, int cols) {
    const bool vec = cols % 4 == 0 && src_stride % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
    const int per_row = vec ? cols / 4 : cols;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
        const int r = e / per_row, c = e % per_row;
        const float* from = src + r * src_stride;
        if (vec) {
            const float4 v = *reinterpret_cast<const float4*>(from + 4 * c);
            float* to = &dst[r][4 * c];
            to[0] = v.x;
            to[1] = v.y;
            to[2] = v.z;
            to[3] = v.w;
        } else {
            dst[r][c] = from[c];
        }
    }
}

// One row of `cols` floats into the warp's `dst`, by the warp's lanes.
__device__ __forceinline__ void load_row(float* dst, const float* src, int cols) {
    for (int d = threadIdx.x % 32; d < cols; d += 32) dst[d] = src[d];
}

// <x, y> over the head dim in column order; x is the warp's row (a shared-memory broadcast).
__device__ __forceinline__ float dot(const float* x, const float* y, int cols) {
    float acc = 0.0f;
    for (int d = 0; d < cols; ++d) acc += x[d] * y[d];
    return acc;
}

// acc[c] += sum over staged rows j < count, in order, of weight[j] * rows[j][lane + 32c]. The
// columns past the head dim gather junk that is never stored.
template <int C>
__device__ __forceinline__ void accumulate(float (&acc)[C], const float* weight, const Chunk& rows, int count) {
    const int lane = threadIdx.x % 32;
    for (int j = 0; j < count; ++j) {
        const float w = weight[j];
        for (int c = 0; c < C; ++c) acc[c] += w * rows[j][lane + 32 * c];
    }
}

// Stores the lane's columns of a row, each times `factor`.
template <int C>
__device__ __forceinline__ void store_row(float* dst, const float (&acc)[C], float factor, int cols) {
    const int lane = threadIdx.x % 32;
    for (int c = 0; c < C; ++c)
        if (lane + 32 * c < cols) dst[lane + 32 * c] = acc[c] * factor;
}

template <int C>
__device__ void attention_forward(const float* qkv, float* out, float* lse, const Block& blk) {
    __shared__ Chunk keys, values;
    __shared__ float query[WARPS][MAX_HEAD_DIM];
    __shared__ float weight[WARPS][CHUNK];
    if (blk.first >= blk.sq.len) return;  // rows past a shorter packed sequence
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = blk.first + warp;
    const attn::KeyRange seen = blk.sq.keys_of(row);
    const attn::KeyRange block_keys = blk.sq.keys_of_rows(blk.first, WARPS);
    if (row < blk.sq.len) load_row(query[warp], qkv + blk.packed(0, row), blk.head_dim);

    // Running max of the scores, and this lane's share of the sum of exp(score - max).
    float max = -INFINITY, lane_sum = 0.0f, o[C] = {};
    for (int k0 = block_keys.begin; k0 < block_keys.end; k0 += CHUNK) {
        __syncthreads();  // the previous chunk has been read
        const int staged = min_of(CHUNK, block_keys.end - k0);
        stage_rows(keys, qkv + blk.packed(1, k0), blk.qkv_row, staged, blk.head_dim);
        stage_rows(values, qkv + blk.packed(2, k0), blk.qkv_row, staged, blk.head_dim);
        __syncthreads();
        if (!seen.meets(k0, staged)) continue;
        // Staged keys before the row's first visible one take part with weight 0.
        const int count = min_of(CHUNK, seen.end - k0);
        const bool shown = lane < count && seen.has(k0 + lane);
        const float s = shown ? dot(query[warp], keys[lane], blk.head_dim) * blk.scale : -INFINITY;
        const float new_max = fmaxf(max, warp_max(s));
        const float rescale = expf(max - new_max);  // 0 on the first chunk
        const float p = shown ? expf(s - new_max) : 0.0f;
        max = new_max;
        lane_sum = lane_sum * rescale + p;
        for (int c = 0; c < C; ++c) o[c] *= rescale;
        weight[warp][lane] = p;
        __syncwarp();
        accumulate<C>(o, weight[warp], values, count);
    }
    const float sum = warp_sum(lane_sum);
    if (row >= blk.sq.len) return;
    if (lane == 0) lse[blk.stat(row)] = !seen.empty() ? max + logf(sum) : -INFINITY;
    store_row<C>(out + blk.unpacked(row), o, !seen.empty() ? 1.0f / sum : 0.0f, blk.head_dim);
}

// Shared memory of a backward block. dQ: the staged rows are keys and values, the warp's own
// rows its query and output gradient, its weights dS. dK/dV: the staged rows are queries and
// output gradients (with their lse, D and visible keys), the warp's rows its key and value,
// its weights P and dS.
struct BackwardSmem {
    Chunk staged[2];
    float own[WARPS][2][MAX_HEAD_DIM];
    float weight[WARPS][2][CHUNK];
    float lse[CHUNK];
    float delta[CHUNK];
    attn::KeyRange seen[CHUNK];
};

// dQ_i = scale * sum_j dS_ij k_j with dS_ij = P_ij (<dO_i, v_j> - D_i), P_ij = exp(scale <q_i, k_j> - lse_i).
template <int C>
__device__ __forceinline__ void backward_dq(BackwardSmem& sm, const float* qkv, const float* dout, const float* lse,
                                            const float* delta, float* dqkv, const Block& blk) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = blk.first + warp;
    const attn::KeyRange seen = blk.sq.keys_of(row);
    const attn::KeyRange block_keys = blk.sq.keys_of_rows(blk.first, WARPS);
    const float row_lse = !seen.empty() ? lse[blk.stat(row)] : 0.0f;
    const float row_delta = !seen.empty() ? delta[blk.stat(row)] : 0.0f;
    float* q = sm.own[warp][0];
    float* dout_row = sm.own[warp][1];
    if (row < blk.sq.len) {
        load_row(q, qkv + blk.packed(0, row), blk.head_dim);
        load_row(dout_row, dout + blk.unpacked(row), blk.head_dim);
    }
    float dq[C] = {};
    for (int k0 = block_keys.begin; k0 < block_keys.end; k0 += CHUNK) {
        __syncthreads();
        const int staged = min_of(CHUNK, block_keys.end - k0);
        stage_rows(sm.staged[0], qkv + blk.packed(1, k0), blk.qkv_row, staged, blk.head_dim);
        stage_rows(sm.staged[1], qkv + blk.packed(2, k0), blk.qkv_row, staged, blk.head_dim);
        __syncthreads();
        if (!seen.meets(k0, staged)) continue;
        const int count = min_of(CHUNK, seen.end - k0);
        float ds = 0.0f;
        if (lane < count && seen.has(k0 + lane)) {
            const float p = expf(dot(q, sm.staged[0][lane], blk.head_dim) * blk.scale - row_lse);
            ds = p * (dot(dout_row, sm.staged[1][lane], blk.head_dim) - row_delta);
        }
        sm.weight[warp][0][lane] = ds;
        __syncwarp();
        accumulate<C>(dq, sm.weight[warp][0], sm.staged[0], count);
    }
    if (row < blk.sq.len) store_row<C>(dqkv + blk.packed(0, row), dq, blk.scale, blk.head_dim);
}

// dV_j = sum_i P_ij dO_i and dK_j = scale * sum_i dS_ij q_i over the queries i that see key j
// (none before j under the causal mask).
template <int C>
__device__ __forceinline__ void backward_dkdv(BackwardSmem& sm, const float* qkv, const float* dout,
                                              const float* lse, const float* delta, float* dqkv, const Block& blk) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int key = blk.first + warp;
    float* k = sm.own[warp][0];
    float* v = sm.own[warp][1];
    if (key < blk.sq.len) {
        load_row(k, qkv + blk.packed(1, key), blk.head_dim);
        load_row(v, qkv + blk.packed(2, key), blk.head_dim);
    }
    // Whether any query sees a key of the block; under the causal mask a query before the block's
    // first key sees none of its keys.
    const bool any_seen = blk.sq.keys_of_rows(0, blk.sq.len).meets(blk.first, WARPS);
    const int q_begin = !any_seen ? blk.sq.len : blk.sq.causal ? blk.first : 0;
    float dk[C] = {}, dv[C] = {};
    for (int q0 = q_begin; q0 < blk.sq.len; q0 += CHUNK) {
        __syncthreads();
        const int count = min_of(CHUNK, blk.sq.len - q0);
        stage_rows(sm.staged[0], qkv + blk.packed(0, q0), blk.qkv_row, count, blk.head_dim);
        stage_rows(sm.staged[1], dout + blk.unpacked(q0), blk.out_row, count, blk.head_dim);
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
            const attn::KeyRange seen = blk.sq.keys_of(q0 + i);
            sm.seen[i] = seen;
            sm.lse[i] = !seen.empty() ? lse[blk.stat(q0 + i)] : 0.0f;
            sm.delta[i] = !seen.empty() ? delta[blk.stat(q0 + i)] : 0.0f;
        }
        __syncthreads();
        if (!blk.sq.keys_of_rows(q0, count).has(key)) continue;  // no query of the chunk sees the key
        float p = 0.0f, ds = 0.0f;
        if (lane < count && sm.seen[lane].has(key)) {
            p = expf(dot(sm.staged[0][lane], k, blk.head_dim) * blk.scale - sm.lse[lane]);
            ds = p * (dot(sm.staged[1][lane], v, blk.head_dim) - sm.delta[lane]);
        }
        sm.weight[warp][0][lane] = p;
        sm.weight[warp][1][lane] = ds;
        __syncwarp();
        accumulate<C>(dv, sm.weight[warp][0], sm.staged[1], count);
        accumulate<C>(dk, sm.weight[warp][1], sm.staged[0], count);
    }
    if (key >= blk.sq.len) return;
    store_row<C>(dqkv + blk.packed(1, key), dk, blk.scale, blk.head_dim);
    store_row<C>(dqkv + blk.packed(2, key), dv, 1.0f, blk.head_dim);
}

template <int C>
__device__ void attention_backward(const float* qkv, const float* dout, const float* lse, const float* delta,
                                   float* dqkv, const Block& blk) {
    __shared__ BackwardSmem sm;
    if (blk.first >= blk.sq.len) return;  // rows past a shorter packed sequence
    if (blockIdx.z == 0) {
        backward_dkdv<C>(sm, qkv, dout, lse, delta, dqkv, blk);
    } else {
        backward_dq<C>(sm, qkv, dout, lse, delta, dqkv, blk);
    }
}

}  // namespace

// Forward: grid (sequences * heads, ceil(longest sequence / 8)), 256 threads; offsets (varlen
// packing) and key_lengths may be null; the mask parameters are attention_seq.cuh's. Backward:
// the same grid with z = 2; z = 0 writes dK and dV, z = 1 dQ. The kernels `_d<N>` serve the head
// dims in (N - 32, N]; C = N / 32 columns per lane.
#define ATTENTION_EXACT_ENTRY_POINTS(N, C)                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        attention_exact_fwd_d##N##_f32(const float* qkv, float* out, float* lse, int len, int heads,             \
                                       ATTENTION_MASK_PARAMS, int head_dim, float scale) {                       \
        attention_forward<C>(qkv, out, lse, block_of(ATTENTION_SEQUENCE, heads, head_dim, scale));               \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        attention_exact_bwd_d##N##_f32(const float* qkv, const float* dout, const float* lse, const float* delta, \
                                       float* dqkv, int len, int heads, ATTENTION_MASK_PARAMS, int head_dim,     \
                                       float scale) {                                                            \
        attention_backward<C>(qkv, dout, lse, delta, dqkv, block_of(ATTENTION_SEQUENCE, heads, head_dim, scale)); \
    }

ATTENTION_EXACT_ENTRY_POINTS(32, 1)
ATTENTION_EXACT_ENTRY_POINTS(64, 2)
ATTENTION_EXACT_ENTRY_POINTS(96, 3)
ATTENTION_EXACT_ENTRY_POINTS(128, 4)
