// BatchNorm2d over the N, H and W of NCHW tensors; the semantics of
// src/backend/cpu/batchnorm.rs (biased variance, batch or fixed statistics).
//
// The reductions over a channel's N*H*W elements are split into `chunks` ranges of `per`
// consecutive elements (src/backend/gpu/batchnorm.rs picks them from the shape alone), one
// block per (channel, chunk), so a batch of 256 at 112x112 keeps every multiprocessor busy:
// one block per channel left most of the chip idle and took 16 ms for one stem layer on an
// H200. Each block writes its chunk's fp32 sum to a partial table; the next launch reduces a
// channel's partials in a fixed order in every block that needs them, so the statistics are
// deterministic. Training forward: sums, then squared deviations from the mean (two passes,
// as the CPU), then y. Backward: sums of dy and dy * xhat, then dx. Mean and variance are
// stored in the tensor's dtype, as the CPU backend returns them.
#include "common.cuh"

constexpr int BN_THREADS = 256;

struct BnShape {
    int n, c, hw;     // the tensor
    int chunks, per;  // each channel's N*H*W elements as `chunks` ranges of `per` (the last shorter)
};

#define BN_SHAPE_PARAMS int n, int c, int hw, int chunks, int per
#define BN_SHAPE BnShape{n, c, hw, chunks, per}

// Block b's channel and chunk.
__device__ __forceinline__ int bn_channel(BnShape s) { return blockIdx.x / s.chunks; }
__device__ __forceinline__ int bn_chunk(BnShape s) { return blockIdx.x % s.chunks; }

// Calls f(i) for the offsets i into x of this block's chunk, one element per thread per step.
// The (sample, position) pair advances by the block's stride; large planes need no division
// per element.
template <typename F>
__device__ __forceinline__ void bn_for_chunk(BnShape s, F f) {
    const int ch = bn_channel(s), start = bn_chunk(s) * s.per;
    const int end = min(start + s.per, s.n * s.hw);
    int e = start + threadIdx.x;
    int sample = e / s.hw, position = e - sample * s.hw;
    for (; e < end; e += blockDim.x) {
        f((static_cast<size_t>(sample) * s.c + ch) * s.hw + position);
        position += blockDim.x;
        if (position >= s.hw) {  // a division only where the stride crosses into the next sample
            sample += position / s.hw;
            position %= s.hw;
        }
    }
}

// The sum of this block's channel's partials, in the same order in every block.
__device__ __forceinline__ float bn_channel_total(const float* __restrict__ partial, BnShape s) {
    const float* mine = partial + static_cast<size_t>(bn_channel(s)) * s.chunks;
    float acc = 0.0f;
    for (int k = threadIdx.x; k < s.chunks; k += blockDim.x) acc += mine[k];
    return block_sum(acc);
}

__device__ __forceinline__ void bn_store_partial(float* __restrict__ partial, float v) {
    if (threadIdx.x == 0) partial[blockIdx.x] = v;
}

// Pass 1 of training: the chunk's sum of x.
template <typename T>
__device__ __forceinline__ void bn_sum(const T* __restrict__ x, float* __restrict__ sums, BnShape s) {
    float acc = 0.0f;
    bn_for_chunk(s, [&](size_t i) { acc += to_float(x[i]); });
    bn_store_partial(sums, block_sum(acc));
}

// Pass 2: the chunk's sum of squared deviations from the channel mean.
template <typename T>
__device__ __forceinline__ void bn_square_deviations(const T* __restrict__ x, const float* __restrict__ sums,
                                                     float* __restrict__ squares, BnShape s) {
    const float mean = bn_channel_total(sums, s) / static_cast<float>(s.n * s.hw);
    float acc = 0.0f;
    bn_for_chunk(s, [&](size_t i) {
        const float d = to_float(x[i]) - mean;
        acc += d * d;
    });
    bn_store_partial(squares, block_sum(acc));
}

// Pass 3: y = x * a + b over the chunk; the first chunk stores the statistics.
template <typename T>
__device__ __forceinline__ void bn_normalise(const T* __restrict__ x, const T* __restrict__ gamma,
                                             const T* __restrict__ beta, const float* __restrict__ sums,
                                             const float* __restrict__ squares, T* __restrict__ y,
                                             T* __restrict__ mean_out, T* __restrict__ var_out, BnShape s,
                                             float eps) {
    const int ch = bn_channel(s);
    const float count = static_cast<float>(s.n * s.hw);
    const float mean = bn_channel_total(sums, s) / count;
    const float var = bn_channel_total(squares, s) / count;
    const float rstd = 1.0f / sqrtf(var + eps);
    const float g = to_float(gamma[ch]);
    const float a = rstd * g, b = to_float(beta[ch]) - mean * rstd * g;
    bn_for_chunk(s, [&](size_t i) { y[i] = from_float<T>(to_float(x[i]) * a + b); });
    if (threadIdx.x == 0 && bn_chunk(s) == 0) {
        mean_out[ch] = from_float<T>(mean);
        var_out[ch] = from_float<T>(var);
    }
}

// y = x * a + b with the given statistics; one thread per element.
template <typename T>
__device__ __forceinline__ void bn_eval(const T* __restrict__ x, const T* __restrict__ gamma,
                                        const T* __restrict__ beta, const T* __restrict__ mean,
                                        const T* __restrict__ var, T* __restrict__ y, int n, int c, int hw,
                                        float eps) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * c * hw) return;
    const int ch = (e / hw) % c;
    const float rstd = 1.0f / sqrtf(to_float(var[ch]) + eps);
    const float g = to_float(gamma[ch]);
    const float a = rstd * g, b = to_float(beta[ch]) - to_float(mean[ch]) * rstd * g;
    y[e] = from_float<T>(to_float(x[e]) * a + b);
}

// Backward pass 1: the chunk's sums of dy and of dy * xhat.
template <typename T>
__device__ __forceinline__ void bn_backward_sums(const T* __restrict__ x, const T* __restrict__ mean,
                                                 const T* __restrict__ var, const T* __restrict__ dy,
                                                 float* __restrict__ dy_sums, float* __restrict__ dy_xhat_sums,
                                                 BnShape s, float eps) {
    const int ch = bn_channel(s);
    const float mu = to_float(mean[ch]);
    const float rstd = 1.0f / sqrtf(to_float(var[ch]) + eps);
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    bn_for_chunk(s, [&](size_t i) {
        const float g = to_float(dy[i]);
        sum_dy += g;
        sum_dy_xhat += g * ((to_float(x[i]) - mu) * rstd);
    });
    bn_store_partial(dy_sums, block_sum(sum_dy));
    bn_store_partial(dy_xhat_sums, block_sum(sum_dy_xhat));
}

// Backward pass 2: dbeta = sum dy, dgamma = sum dy * xhat (stored by the first chunk), and dx
// over the chunk; with batch statistics dx also carries the paths through the batch mean and
// variance.
template <typename T>
__device__ __forceinline__ void bn_backward_dx(const T* __restrict__ x, const T* __restrict__ gamma,
                                               const T* __restrict__ mean, const T* __restrict__ var,
                                               const T* __restrict__ dy, const float* __restrict__ dy_sums,
                                               const float* __restrict__ dy_xhat_sums, T* __restrict__ dx,
                                               T* __restrict__ dgamma, T* __restrict__ dbeta, BnShape s, float eps,
                                               int batch_stats) {
    const int ch = bn_channel(s);
    const float mu = to_float(mean[ch]);
    const float rstd = 1.0f / sqrtf(to_float(var[ch]) + eps);
    const float db = bn_channel_total(dy_sums, s), dg = bn_channel_total(dy_xhat_sums, s);
    const float scale = to_float(gamma[ch]) * rstd, total = static_cast<float>(s.n * s.hw);
    bn_for_chunk(s, [&](size_t i) {
        const float g = to_float(dy[i]);
        const float xhat = (to_float(x[i]) - mu) * rstd;
        dx[i] = from_float<T>(batch_stats ? scale * (g - db / total - xhat * dg / total) : scale * g);
    });
    if (threadIdx.x == 0 && bn_chunk(s) == 0) {
        dgamma[ch] = from_float<T>(dg);
        dbeta[ch] = from_float<T>(db);
    }
}

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define BATCHNORM_ENTRY_POINTS(T, SUFFIX)                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_sum_##SUFFIX(const T* x, float* sums, BN_SHAPE_PARAMS) {                                                   \
        bn_sum(x, sums, BN_SHAPE);                                                                                   \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_square_deviations_##SUFFIX(const T* x, const float* sums, float* squares, BN_SHAPE_PARAMS) {               \
        bn_square_deviations(x, sums, squares, BN_SHAPE);                                                            \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_normalise_##SUFFIX(const T* x, const T* gamma, const T* beta, const float* sums, const float* squares,    \
                              T* y, T* mean, T* var, BN_SHAPE_PARAMS, float eps) {                                   \
        bn_normalise(x, gamma, beta, sums, squares, y, mean, var, BN_SHAPE, eps);                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_eval_##SUFFIX(const T* x, const T* gamma, const T* beta, const T* mean, const T* var, T* y, int n, int c, \
                         int hw, float eps) {                                                                        \
        bn_eval(x, gamma, beta, mean, var, y, n, c, hw, eps);                                                        \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_backward_sums_##SUFFIX(const T* x, const T* mean, const T* var, const T* dy, float* dy_sums,              \
                                  float* dy_xhat_sums, BN_SHAPE_PARAMS, float eps) {                                 \
        bn_backward_sums(x, mean, var, dy, dy_sums, dy_xhat_sums, BN_SHAPE, eps);                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_backward_dx_##SUFFIX(const T* x, const T* gamma, const T* mean, const T* var, const T* dy,                \
                                const float* dy_sums, const float* dy_xhat_sums, T* dx, T* dgamma, T* dbeta,         \
                                BN_SHAPE_PARAMS, float eps, int batch_stats) {                                       \
        bn_backward_dx(x, gamma, mean, var, dy, dy_sums, dy_xhat_sums, dx, dgamma, dbeta, BN_SHAPE, eps,             \
                       batch_stats);                                                                                 \
    }

BATCHNORM_ENTRY_POINTS(float, f32)
BATCHNORM_ENTRY_POINTS(bf16, bf16)
