// BatchNorm2d over the N, H and W of NCHW tensors; the semantics of
// src/backend/cpu/batchnorm.rs (biased variance, batch or fixed statistics).
//
// Training forward and backward run one block per channel: the block strides over the
// channel's N planes of H*W elements, reduces in fp32 with block_sum (a fixed tree over fixed
// per-thread strides, so the statistics are deterministic), then makes a second or third pass
// that writes the output. Statistics stay in fp32 inside the kernel; mean and variance are
// stored in the tensor's dtype, as the CPU backend returns them.
#include "common.cuh"

constexpr int BN_THREADS = 256;

// Element e of the channel's range (sample e / hw, position e % hw) as an offset into x.
__device__ __forceinline__ size_t bn_offset(int e, int ch, int c, int hw) {
    return (static_cast<size_t>(e / hw) * c + ch) * hw + e % hw;
}

// Block ch: mean, biased variance (two passes, as the CPU), then y = x * a + b.
template <typename T>
__device__ __forceinline__ void bn_train(const T* __restrict__ x, const T* __restrict__ gamma,
                                         const T* __restrict__ beta, T* __restrict__ y, T* __restrict__ mean_out,
                                         T* __restrict__ var_out, int n, int c, int hw, float eps) {
    const int ch = blockIdx.x, count = n * hw;
    float acc = 0.0f;
    for (int e = threadIdx.x; e < count; e += blockDim.x) acc += to_float(x[bn_offset(e, ch, c, hw)]);
    const float mean = block_sum(acc) / static_cast<float>(count);
    acc = 0.0f;
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
        const float d = to_float(x[bn_offset(e, ch, c, hw)]) - mean;
        acc += d * d;
    }
    const float var = block_sum(acc) / static_cast<float>(count);
    const float rstd = 1.0f / sqrtf(var + eps);
    const float g = to_float(gamma[ch]);
    const float a = rstd * g, b = to_float(beta[ch]) - mean * rstd * g;
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
        const size_t i = bn_offset(e, ch, c, hw);
        y[i] = from_float<T>(to_float(x[i]) * a + b);
    }
    if (threadIdx.x == 0) {
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

// Block ch: dbeta = sum dy, dgamma = sum dy * xhat, then dx; with batch statistics dx also
// carries the paths through the batch mean and variance.
template <typename T>
__device__ __forceinline__ void bn_backward(const T* __restrict__ x, const T* __restrict__ gamma,
                                            const T* __restrict__ mean, const T* __restrict__ var,
                                            const T* __restrict__ dy, T* __restrict__ dx, T* __restrict__ dgamma,
                                            T* __restrict__ dbeta, int n, int c, int hw, float eps,
                                            int batch_stats) {
    const int ch = blockIdx.x, count = n * hw;
    const float mu = to_float(mean[ch]);
    const float rstd = 1.0f / sqrtf(to_float(var[ch]) + eps);
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
        const size_t i = bn_offset(e, ch, c, hw);
        const float g = to_float(dy[i]);
        sum_dy += g;
        sum_dy_xhat += g * ((to_float(x[i]) - mu) * rstd);
    }
    const float db = block_sum(sum_dy), dg = block_sum(sum_dy_xhat);
    const float scale = to_float(gamma[ch]) * rstd, total = static_cast<float>(count);
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
        const size_t i = bn_offset(e, ch, c, hw);
        const float g = to_float(dy[i]);
        const float xhat = (to_float(x[i]) - mu) * rstd;
        dx[i] = from_float<T>(batch_stats ? scale * (g - db / total - xhat * dg / total) : scale * g);
    }
    if (threadIdx.x == 0) {
        dgamma[ch] = from_float<T>(dg);
        dbeta[ch] = from_float<T>(db);
    }
}

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define BATCHNORM_ENTRY_POINTS(T, SUFFIX)                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_train_##SUFFIX(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* var, int n, int c, int hw,    \
                          float eps) {                                                                               \
        bn_train(x, gamma, beta, y, mean, var, n, c, hw, eps);                                                       \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_eval_##SUFFIX(const T* x, const T* gamma, const T* beta, const T* mean, const T* var, T* y, int n, int c, \
                         int hw, float eps) {                                                                        \
        bn_eval(x, gamma, beta, mean, var, y, n, c, hw, eps);                                                        \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_backward_##SUFFIX(const T* x, const T* gamma, const T* mean, const T* var, const T* dy, T* dx, T* dgamma,  \
                             T* dbeta, int n, int c, int hw, float eps, int batch_stats) {                           \
        bn_backward(x, gamma, mean, var, dy, dx, dgamma, dbeta, n, c, hw, eps, batch_stats);                         \
    }

BATCHNORM_ENTRY_POINTS(float, f32)
BATCHNORM_ENTRY_POINTS(bf16, bf16)
