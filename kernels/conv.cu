// 2-D convolution, NCHW, weight [C_out, C_in/groups, kh, kw], no bias; the semantics of
// src/backend/cpu/conv.rs.
//
// Dense and grouped convolutions are im2col + GEMM: im2col writes the patches of the whole
// batch as one [C_in*kh*kw, N*Ho*Wo] matrix, whose row blocks are the groups, so one batched
// GEMM over the groups (the driver's, cuBLASLt on a GPU) multiplies them by the weight
// [groups, C_out/groups, C_in/groups*kh*kw]. The product comes out channel-major
// ([C_out, N, Ho*Wo]); swap_outer moves it to NCHW (and dy the other way in backward).
// col2im gathers the column gradient back into the image: each input pixel sums its taps in
// a fixed order, so there are no atomics and the result is deterministic.
//
// Depthwise convolutions (groups == C_in == C_out) have dedicated kernels: one thread per
// output (forward) or input (dx) element, and for dW one block per (channel, tap) that reduces
// over the batch and the image in a fixed order.
#include "common.cuh"

constexpr int CONV_THREADS = 256;

struct ConvGeometry {
    int n, c, h, w;  // input
    int kh, kw, stride, pad;
    int ho, wo;  // output
};

// The kernels' geometry parameters and the struct built from them, so every entry point takes
// the same ints in the same order (src/backend/gpu/conv.rs passes them).
#define CONV_GEOMETRY_PARAMS int n, int c, int h, int w, int kh, int kw, int stride, int pad, int ho, int wo
#define CONV_GEOMETRY ConvGeometry{n, c, h, w, kh, kw, stride, pad, ho, wo}

// col[(ch*kh + i)*kw + j][(s*Ho + oy)*Wo + ox] = x[s][ch][oy*stride + i - pad][ox*stride + j - pad],
// zero outside the image. One thread per element of col; consecutive threads read along a row.
template <typename T>
__device__ __forceinline__ void im2col(const T* __restrict__ x, T* __restrict__ col, ConvGeometry g) {
    const int columns = g.n * g.ho * g.wo;
    const int total = g.c * g.kh * g.kw * columns;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    const int row = e / columns, column = e % columns;
    const int j = row % g.kw, i = (row / g.kw) % g.kh, ch = row / (g.kw * g.kh);
    const int ox = column % g.wo, oy = (column / g.wo) % g.ho, s = column / (g.wo * g.ho);
    const int y = oy * g.stride + i - g.pad, xx = ox * g.stride + j - g.pad;
    const bool inside = y >= 0 && y < g.h && xx >= 0 && xx < g.w;
    col[e] = inside ? x[((s * g.c + ch) * g.h + y) * g.w + xx] : from_float<T>(0.0f);
}

// The output index whose tap i reads input index y (y = o*stride + i - pad), or -1 if none.
__device__ __forceinline__ int source_out(int y, int i, int stride, int pad, int out_len) {
    const int t = y + pad - i;
    if (t < 0 || t % stride != 0 || t / stride >= out_len) return -1;
    return t / stride;
}

// dx[s][ch][y][xx] = sum over taps (i, j) of col[(ch*kh + i)*kw + j][(s*Ho + oy)*Wo + ox] for
// the output pixel (oy, ox) that tap reads (y, xx) from. One thread per input element.
template <typename T>
__device__ __forceinline__ void col2im(const T* __restrict__ col, T* __restrict__ dx, ConvGeometry g) {
    const int total = g.n * g.c * g.h * g.w;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    const int xx = e % g.w, y = (e / g.w) % g.h, ch = (e / (g.w * g.h)) % g.c, s = e / (g.w * g.h * g.c);
    const int columns = g.n * g.ho * g.wo;
    float acc = 0.0f;
    for (int i = 0; i < g.kh; ++i) {
        const int oy = source_out(y, i, g.stride, g.pad, g.ho);
        if (oy < 0) continue;
        for (int j = 0; j < g.kw; ++j) {
            const int ox = source_out(xx, j, g.stride, g.pad, g.wo);
            if (ox < 0) continue;
            acc += to_float(col[((ch * g.kh + i) * g.kw + j) * columns + (s * g.ho + oy) * g.wo + ox]);
        }
    }
    dx[e] = from_float<T>(acc);
}

// out[j][i][k] = in[i][j][k] for in [a, b, inner]: NCHW <-> channel-major. One thread per output
// element; the innermost dimension stays contiguous on both sides.
template <typename T>
__device__ __forceinline__ void swap_outer(const T* __restrict__ in, T* __restrict__ out, int a, int b, int inner) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= a * b * inner) return;
    const int k = e % inner, i = (e / inner) % a, j = e / (inner * a);
    out[e] = in[(i * b + j) * inner + k];
}

// Depthwise forward: y[s][ch][oy][ox] = sum over taps of w[ch][i][j] * x[s][ch][y][xx].
template <typename T>
__device__ __forceinline__ void dwconv_fwd(const T* __restrict__ x, const T* __restrict__ wt, T* __restrict__ out,
                                           ConvGeometry g) {
    const int total = g.n * g.c * g.ho * g.wo;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    const int ox = e % g.wo, oy = (e / g.wo) % g.ho, plane = e / (g.wo * g.ho), ch = plane % g.c;
    const T* img = x + static_cast<size_t>(plane) * g.h * g.w;
    const T* taps = wt + ch * g.kh * g.kw;
    float acc = 0.0f;
    for (int i = 0; i < g.kh; ++i) {
        const int y = oy * g.stride + i - g.pad;
        if (y < 0 || y >= g.h) continue;
        for (int j = 0; j < g.kw; ++j) {
            const int xx = ox * g.stride + j - g.pad;
            if (xx < 0 || xx >= g.w) continue;
            acc += to_float(taps[i * g.kw + j]) * to_float(img[y * g.w + xx]);
        }
    }
    out[e] = from_float<T>(acc);
}

// Depthwise dx: each input element gathers w[ch][i][j] * dy over the outputs that read it.
template <typename T>
__device__ __forceinline__ void dwconv_dx(const T* __restrict__ dy, const T* __restrict__ wt, T* __restrict__ dx,
                                          ConvGeometry g) {
    const int total = g.n * g.c * g.h * g.w;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    const int xx = e % g.w, y = (e / g.w) % g.h, plane = e / (g.w * g.h), ch = plane % g.c;
    const T* grad = dy + static_cast<size_t>(plane) * g.ho * g.wo;
    const T* taps = wt + ch * g.kh * g.kw;
    float acc = 0.0f;
    for (int i = 0; i < g.kh; ++i) {
        const int oy = source_out(y, i, g.stride, g.pad, g.ho);
        if (oy < 0) continue;
        for (int j = 0; j < g.kw; ++j) {
            const int ox = source_out(xx, j, g.stride, g.pad, g.wo);
            if (ox < 0) continue;
            acc += to_float(taps[i * g.kw + j]) * to_float(grad[oy * g.wo + ox]);
        }
    }
    dx[e] = from_float<T>(acc);
}

// Depthwise dW: block (channel, tap) sums dy * x over every sample and output pixel. Each
// thread walks a fixed stride of the range and block_sum adds the partials in a fixed tree,
// so the result does not depend on scheduling.
template <typename T>
__device__ __forceinline__ void dwconv_dw(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw,
                                          ConvGeometry g) {
    const int ch = blockIdx.x, tap = blockIdx.y;
    const int i = tap / g.kw, j = tap % g.kw;
    const int per_plane = g.ho * g.wo;
    float acc = 0.0f;
    for (int e = threadIdx.x; e < g.n * per_plane; e += blockDim.x) {
        const int s = e / per_plane, ox = e % g.wo, oy = (e % per_plane) / g.wo;
        const int y = oy * g.stride + i - g.pad, xx = ox * g.stride + j - g.pad;
        if (y < 0 || y >= g.h || xx < 0 || xx >= g.w) continue;
        const size_t plane = static_cast<size_t>(s) * g.c + ch;
        acc += to_float(dy[plane * per_plane + oy * g.wo + ox]) * to_float(x[(plane * g.h + y) * g.w + xx]);
    }
    const float total = block_sum(acc);
    if (threadIdx.x == 0) dw[ch * g.kh * g.kw + tap] = from_float<T>(total);
}

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define CONV_ENTRY_POINTS(T, SUFFIX)                                                                                   \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        im2col_##SUFFIX(const T* x, T* col, CONV_GEOMETRY_PARAMS) {                                                  \
        im2col(x, col, CONV_GEOMETRY);                                                                               \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        col2im_##SUFFIX(const T* col, T* dx, CONV_GEOMETRY_PARAMS) {                                                 \
        col2im(col, dx, CONV_GEOMETRY);                                                                              \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        swap_outer_##SUFFIX(const T* in, T* out, int a, int b, int inner) {                                          \
        swap_outer(in, out, a, b, inner);                                                                            \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        dwconv_fwd_##SUFFIX(const T* x, const T* weight, T* y, CONV_GEOMETRY_PARAMS) {                               \
        dwconv_fwd(x, weight, y, CONV_GEOMETRY);                                                                     \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        dwconv_dx_##SUFFIX(const T* dy, const T* weight, T* dx, CONV_GEOMETRY_PARAMS) {                              \
        dwconv_dx(dy, weight, dx, CONV_GEOMETRY);                                                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        dwconv_dw_##SUFFIX(const T* x, const T* dy, T* dw, CONV_GEOMETRY_PARAMS) {                                   \
        dwconv_dw(x, dy, dw, CONV_GEOMETRY);                                                                         \
    }

CONV_ENTRY_POINTS(float, f32)
CONV_ENTRY_POINTS(bf16, bf16)
