// Symmetric InfoNCE (CLIP's contrastive loss), forward and backward, without the N x N logits
// (DESIGN 3, the Inf-CL idea).
//
// img and txt are [n, d]; logits z[i][j] = t <img_i, txt_j> with t = min(exp(logit_scale),
// max_scale). The loss is (sum_i row_lse_i + sum_j col_lse_j - 2 sum_i z_ii) / (2n).
//
// Every kernel works on 64 "own" rows per block (4 warps of 16, tile.cuh) against all n "other"
// rows, 64 at a time, recomputing each 64 x 64 tile of z from the features: the row direction
// has img as own and txt as other, the column direction the reverse (z^T = t txt img^T), so one
// kernel body serves both and gridDim picks the direction. Memory beyond inputs and outputs is
// O(n): two lse vectors and one partial sum per block, reduced in a fixed order (no atomics, so
// results are deterministic).
//
// - forward: online max / sum of exp over the other rows gives each own row's lse, and the block
//   adds (lse - z_diag) of its rows into its partial of the loss.
// - backward: dz = g (exp(z - lse_own) + exp(z - lse_other) - 2 [diag]), g = dloss / (2n), and
//   d own = t dz other; each block owns 64 rows x 64 feature columns of d img or d txt. The row
//   direction also sums dz * z, the gradient of the logit scale (zero while the clamp holds).
//
// Precision: bf16 features feed the tensor cores (their products are exact in fp32, so z is
// fp32-accurate; dz is rounded to bf16 for the d own product). f32 features stay f32 on a SIMT
// path: with t up to 100, rounding features to bf16 would move logits by ~0.4.
#include "tile.cuh"

namespace {

using namespace tile;

constexpr int K_CHUNK = 64;  // feature columns per staged chunk

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

constexpr int STAGE_STRIDE = f32_stride(K_CHUNK);

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

// acc (the warp's 16 own rows x 64 other rows) += own other^T over one feature chunk.
__device__ __forceinline__ void chunk_product(float acc[8][4], const bf16* own, const bf16* other) {
    mma_rows<K_CHUNK / 16, 8, Operand<bf16>::STRIDE>(acc, own, other);
}

__device__ __forceinline__ void chunk_product(float acc[8][4], const float* own, const float* other) {
    constexpr int S = Operand<float>::STRIDE;
    const Lane p = lane_position();
    for (int k = 0; k < K_CHUNK; k += 4) {
        const float4 a[2] = {*reinterpret_cast<const float4*>(own + p.g * S + k),
                             *reinterpret_cast<const float4*>(own + (p.g + 8) * S + k)};
        for (int j = 0; j < 8; ++j) {
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

// acc (16 own rows x 64 feature columns) += p other_chunk, p a 16 x 64 fragment over the other
// rows. The f32 path goes through `scratch`, the warp's own 16 rows of the own tile (which only
// this warp reads), since SIMT lanes need whole rows of p.
__device__ __forceinline__ void fragment_product(float acc[8][4], const float p[8][4], bf16* /*scratch*/,
                                                 const bf16* other) {
    mma_fragment<8, Operand<bf16>::STRIDE>(acc, p, other);
}

__device__ __forceinline__ void fragment_product(float acc[8][4], const float p[8][4], float* scratch,
                                                 const float* other) {
    constexpr int S = Operand<float>::STRIDE;
    const Lane l = lane_position();
    __syncwarp();  // every lane has read its own rows (chunk_product) before they become scratch
    fragment_to_stage<8>(scratch, S, p, 1.0f);
    __syncwarp();
    for (int k = 0; k < K_CHUNK; ++k) {
        const float p0 = scratch[l.g * S + k], p1 = scratch[(l.g + 8) * S + k];
        for (int j = 0; j < 8; ++j) {
            const float2 b = *reinterpret_cast<const float2*>(other + k * S + 8 * j + 2 * l.t);
            acc[j][0] = fmaf(p0, b.x, acc[j][0]);
            acc[j][1] = fmaf(p0, b.y, acc[j][1]);
            acc[j][2] = fmaf(p1, b.x, acc[j][2]);
            acc[j][3] = fmaf(p1, b.y, acc[j][3]);
        }
    }
}

// The direction a block works in and the rows it owns.
template <typename T>
struct Side {
    const T* own;
    const T* other;
    int r0, rows;

    __device__ static Side of(bool by_column, const T* img, const T* txt, int n) {
        const int r0 = blockIdx.x * ROWS;
        return Side{by_column ? txt : img, by_column ? img : txt, r0, imin(ROWS, n - r0)};
    }
};

// Unscaled <own_r, other_c> for the warp's 16 own rows against other rows c0 .. c0 + 63, over
// every feature chunk. With last_chunk >= 0 that chunk is staged last, so that its other rows
// are still in other_tile when the caller multiplies by them.
template <typename T, typename S>
__device__ void logits_tile(float acc[8][4], const Side<T>& side, int c0, int n, int d, S* own_tile, S* other_tile,
                            int last_chunk) {
    constexpr int STRIDE = Operand<T>::STRIDE;
    zero_fragment<8>(acc);
    const int chunks = (d + K_CHUNK - 1) / K_CHUNK;
    const int warp = threadIdx.x / 32;
    for (int i = 0; i < chunks; ++i) {
        const int k0 = K_CHUNK * (last_chunk < 0 ? i : (last_chunk + 1 + i) % chunks);
        __syncthreads();  // the previous chunk has been read
        stage_rows<K_CHUNK, STRIDE>(own_tile, side.own + static_cast<size_t>(side.r0) * d + k0, d, side.rows, d - k0);
        stage_rows<K_CHUNK, STRIDE>(other_tile, side.other + static_cast<size_t>(c0) * d + k0, d, imin(ROWS, n - c0),
                                    d - k0);
        __syncthreads();
        chunk_product(acc, own_tile + warp * WARP_ROWS * STRIDE, other_tile);
    }
}

// Grid (ceil(n / 64), 2): y = 0 rows (lse over texts), y = 1 columns (lse over images).
// partials[y * gridDim.x + x] = sum over the block's rows of (lse - z_diag).
template <typename T>
__device__ void infonce_forward(const T* img, const T* txt, const T* logit_scale, float max_scale, int n, int d,
                                float* row_lse, float* col_lse, float* partials) {
    using S = typename Operand<T>::S;
    constexpr int STRIDE = Operand<T>::STRIDE;
    __shared__ __align__(16) S own_tile[ROWS * STRIDE];
    __shared__ __align__(16) S other_tile[ROWS * STRIDE];
    const bool by_column = blockIdx.y == 1;
    const Side<T> side = Side<T>::of(by_column, img, txt, n);
    const Lane p = lane_position();
    const int row0 = side.r0 + p.warp * WARP_ROWS;
    const float t = temperature(logit_scale, max_scale).value;

    RowStats st = empty_stats();
    float diagonal = 0.0f;
    for (int c0 = 0; c0 < n; c0 += ROWS) {
        float z[8][4];
        logits_tile(z, side, c0, n, d, own_tile, other_tile, -1);
        for (int j = 0; j < 8; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = c0 + 8 * j + 2 * p.t + i % 2, row = row0 + p.g + 8 * (i / 2);
                const float logit = z[j][i] * t;
                if (col == row && col < n) diagonal += logit;
                z[j][i] = col < n ? logit * LOG2E : -INFINITY;
            }
        float rescale[2];
        softmax_step(z, st, rescale);
    }
    float lse[2], inv_sum[2];
    finish_rows(st, lse, inv_sum);
    float* lse_out = by_column ? col_lse : row_lse;
    float contribution = -diagonal;
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + p.g + 8 * half;
        if (p.t == 0 && row < n) {
            lse_out[row] = lse[half];
            contribution += lse[half];
        }
    }
    const float total = block_sum(contribution);
    if (threadIdx.x == 0) partials[blockIdx.y * gridDim.x + blockIdx.x] = total;
}

// Grid (ceil(n / 64), ceil(d / 64), 2): x own rows, y feature columns, z = 0 d img, 1 d txt.
// The blocks of d img's first feature columns write partials[x] = their rows' sum of dz * z.
template <typename T>
__device__ void infonce_backward(const T* img, const T* txt, const T* logit_scale, float max_scale, const T* dloss,
                                 const float* row_lse, const float* col_lse, int n, int d, T* dimg, T* dtxt,
                                 float* partials) {
    using S = typename Operand<T>::S;
    constexpr int STRIDE = Operand<T>::STRIDE;
    __shared__ __align__(16) S tiles[2 * ROWS * STRIDE];  // own, other; then the fp32 output staging
    static_assert(ROWS * STAGE_STRIDE * sizeof(float) <= sizeof(tiles), "the output staging fits over the tiles");
    S* own_tile = tiles;
    S* other_tile = tiles + ROWS * STRIDE;
    const bool by_column = blockIdx.z == 1;
    const int chunk = blockIdx.y;
    const Side<T> side = Side<T>::of(by_column, img, txt, n);
    const float* own_lse = by_column ? col_lse : row_lse;
    const float* other_lse = by_column ? row_lse : col_lse;
    const Lane p = lane_position();
    const int row0 = side.r0 + p.warp * WARP_ROWS;
    const float t = temperature(logit_scale, max_scale).value;
    const float g = to_float(dloss[0]) / (2.0f * static_cast<float>(n));
    float own_lse2[2];
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + p.g + 8 * half;
        own_lse2[half] = row < n ? own_lse[row] * LOG2E : 0.0f;
    }

    float grad[8][4];
    zero_fragment<8>(grad);
    float dscale = 0.0f;
    for (int c0 = 0; c0 < n; c0 += ROWS) {
        float z[8][4];
        logits_tile(z, side, c0, n, d, own_tile, other_tile, chunk);
        for (int j = 0; j < 8; ++j)
            for (int i = 0; i < 4; ++i) {
                const int col = c0 + 8 * j + 2 * p.t + i % 2, row = row0 + p.g + 8 * (i / 2);
                float dz = 0.0f;
                if (row < n && col < n) {
                    const float logit = z[j][i] * t, logit2 = logit * LOG2E;
                    const float target = row == col ? 2.0f : 0.0f;
                    dz = g * (exp2f(logit2 - own_lse2[i / 2]) + exp2f(logit2 - other_lse[col] * LOG2E) - target);
                    dscale = fmaf(dz, logit, dscale);
                }
                z[j][i] = dz;
            }
        fragment_product(grad, z, own_tile + p.warp * WARP_ROWS * STRIDE, other_tile);
    }
    __syncthreads();  // the tiles are free for the staging
    float* stage = reinterpret_cast<float*>(tiles);
    fragment_to_stage<8>(stage + p.warp * WARP_ROWS * STAGE_STRIDE, STAGE_STRIDE, grad, t);
    __syncthreads();
    const int k0 = chunk * K_CHUNK;
    T* out = (by_column ? dtxt : dimg) + static_cast<size_t>(side.r0) * d + k0;
    store_rows<K_CHUNK, STAGE_STRIDE>(out, d, stage, side.rows, d - k0);
    if (!by_column && chunk == 0) {
        const float total = block_sum(dscale);
        if (threadIdx.x == 0) partials[blockIdx.x] = total;
    }
}

// One block: out[0] = factor * (partials summed in a fixed order), or 0 when
// `zero_when_clamped` and the logit scale is clamped.
template <typename T>
__device__ void infonce_reduce(const float* partials, int count, float factor, const T* logit_scale, float max_scale,
                               int zero_when_clamped, T* out) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    const float total = block_sum(acc);
    if (threadIdx.x == 0) {
        const bool frozen = zero_when_clamped && temperature(logit_scale, max_scale).clamped;
        out[0] = from_float<T>(frozen ? 0.0f : total * factor);
    }
}

}  // namespace

// 128 threads per block for the forward and backward kernels; max_scale is +inf without a clamp.
extern "C" __global__ void __launch_bounds__(128)
    infonce_fwd_f32(const float* img, const float* txt, const float* logit_scale, float max_scale, int n, int d,
                    float* row_lse, float* col_lse, float* partials) {
    infonce_forward<float>(img, txt, logit_scale, max_scale, n, d, row_lse, col_lse, partials);
}
extern "C" __global__ void __launch_bounds__(128)
    infonce_fwd_bf16(const bf16* img, const bf16* txt, const bf16* logit_scale, float max_scale, int n, int d,
                     float* row_lse, float* col_lse, float* partials) {
    infonce_forward<bf16>(img, txt, logit_scale, max_scale, n, d, row_lse, col_lse, partials);
}
extern "C" __global__ void __launch_bounds__(128)
    infonce_bwd_f32(const float* img, const float* txt, const float* logit_scale, float max_scale,
                    const float* dloss, const float* row_lse, const float* col_lse, int n, int d, float* dimg,
                    float* dtxt, float* partials) {
    infonce_backward<float>(img, txt, logit_scale, max_scale, dloss, row_lse, col_lse, n, d, dimg, dtxt, partials);
}
extern "C" __global__ void __launch_bounds__(128)
    infonce_bwd_bf16(const bf16* img, const bf16* txt, const bf16* logit_scale, float max_scale, const bf16* dloss,
                     const float* row_lse, const float* col_lse, int n, int d, bf16* dimg, bf16* dtxt,
                     float* partials) {
    infonce_backward<bf16>(img, txt, logit_scale, max_scale, dloss, row_lse, col_lse, n, d, dimg, dtxt, partials);
}
// One block of 256 threads.
extern "C" __global__ void infonce_reduce_f32(const float* partials, int count, float factor,
                                              const float* logit_scale, float max_scale, int zero_when_clamped,
                                              float* out) {
    infonce_reduce<float>(partials, count, factor, logit_scale, max_scale, zero_when_clamped, out);
}
extern "C" __global__ void infonce_reduce_bf16(const float* partials, int count, float factor, const bf16* logit_scale,
                                               float max_scale, int zero_when_clamped, bf16* out) {
    infonce_reduce<bf16>(partials, count, factor, logit_scale, max_scale, zero_when_clamped, out);
}
