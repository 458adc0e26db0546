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

// The kernels below map threads so that integer division, which the GPU does in software
// (about 20 instructions), happens a few times per thread rather than several times per tap:
// with one division per tap index, col2im and the depthwise dx were bound by index arithmetic
// at 5-10x their memory time on an H200. blockIdx.y is the sample (or the outer index), and
// a thread's position inside its sample comes from two divisions.

// col[(ch*kh + i)*kw + j][(s*Ho + oy)*Wo + ox] = x[s][ch][oy*stride + i - pad][ox*stride + j - pad],
// zero outside the image. Thread (ch, oy, ox) of sample s writes the kh*kw rows of its channel;
// consecutive threads write consecutive columns.
template <typename T>
__device__ __forceinline__ void im2col(const T* __restrict__ x, T* __restrict__ col, ConvGeometry g) {
    const int plane_out = g.ho * g.wo;
    const int e = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y;
    if (e >= g.c * plane_out) return;
    const int ch = e / plane_out, p = e - ch * plane_out;
    const int oy = p / g.wo, ox = p - oy * g.wo;
    const size_t columns = static_cast<size_t>(g.n) * plane_out;
    const T* img = x + (static_cast<size_t>(s) * g.c + ch) * g.h * g.w;
    T* out = col + static_cast<size_t>(ch) * g.kh * g.kw * columns + static_cast<size_t>(s) * plane_out + p;
    for (int i = 0; i < g.kh; ++i) {
        const int y = oy * g.stride + i - g.pad;
        for (int j = 0; j < g.kw; ++j, out += columns) {
            const int xx = ox * g.stride + j - g.pad;
            const bool inside = y >= 0 && y < g.h && xx >= 0 && xx < g.w;
            *out = inside ? img[y * g.w + xx] : from_float<T>(0.0f);
        }
    }
}

// The outputs o (along one axis) whose tap i = v + pad - o*stride reads input position v: o in
// [lo, hi), i in [0, k) and o in [0, out_len).
struct TapRange {
    int lo, hi;
};

__device__ __forceinline__ TapRange taps_reading(int v, int k, int stride, int pad, int out_len) {
    const int t = v + pad;
    return TapRange{t < k ? 0 : (t - k) / stride + 1, min(t / stride + 1, out_len)};
}

// Thread (ch, y, xx) of sample blockIdx.y: its position in the input and the output ranges
// whose taps read it; false past the end.
struct InputPixel {
    int ch, y, xx;
    TapRange rows, cols;
};

__device__ __forceinline__ bool input_pixel(ConvGeometry g, InputPixel& px) {
    const int plane = g.h * g.w;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= g.c * plane) return false;
    px.ch = e / plane;
    const int p = e - px.ch * plane;
    px.y = p / g.w;
    px.xx = p - px.y * g.w;
    px.rows = taps_reading(px.y, g.kh, g.stride, g.pad, g.ho);
    px.cols = taps_reading(px.xx, g.kw, g.stride, g.pad, g.wo);
    return true;
}

__device__ __forceinline__ size_t input_offset(ConvGeometry g, const InputPixel& px) {
    return ((static_cast<size_t>(blockIdx.y) * g.c + px.ch) * g.h + px.y) * g.w + px.xx;
}

// dx[s][ch][y][xx] = sum over the taps (i, j) that read (y, xx) of the column-gradient entry of
// that tap and output pixel. Gathered per input element, in a fixed order: no atomics.
template <typename T>
__device__ __forceinline__ void col2im(const T* __restrict__ col, T* __restrict__ dx, ConvGeometry g) {
    InputPixel px;
    if (!input_pixel(g, px)) return;
    const size_t columns = static_cast<size_t>(g.n) * g.ho * g.wo;
    const T* sample = col + static_cast<size_t>(blockIdx.y) * g.ho * g.wo;
    float acc = 0.0f;
    for (int oy = px.rows.lo; oy < px.rows.hi; ++oy) {
        const int i = px.y + g.pad - oy * g.stride;
        for (int ox = px.cols.lo; ox < px.cols.hi; ++ox) {
            const int j = px.xx + g.pad - ox * g.stride;
            acc += to_float(sample[((px.ch * g.kh + i) * g.kw + j) * columns + oy * g.wo + ox]);
        }
    }
    dx[input_offset(g, px)] = from_float<T>(acc);
}

// out[j][i][k] = in[i][j][k] for in [a, b, inner]: NCHW <-> channel-major. Block row blockIdx.y
// is j; the innermost dimension stays contiguous on both sides.
template <typename T>
__device__ __forceinline__ void swap_outer(const T* __restrict__ in, T* __restrict__ out, int a, int b, int inner) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (e >= a * inner) return;
    const int i = e / inner, k = e - i * inner;
    out[static_cast<size_t>(j) * a * inner + e] = in[(static_cast<size_t>(i) * b + j) * inner + k];
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

// Depthwise dx: each input element gathers w[ch][i][j] * dy over the outputs that read it
// (threads mapped as in col2im).
template <typename T>
__device__ __forceinline__ void dwconv_dx(const T* __restrict__ dy, const T* __restrict__ wt, T* __restrict__ dx,
                                          ConvGeometry g) {
    InputPixel px;
    if (!input_pixel(g, px)) return;
    const T* grad = dy + (static_cast<size_t>(blockIdx.y) * g.c + px.ch) * g.ho * g.wo;
    const T* taps = wt + px.ch * g.kh * g.kw;
    float acc = 0.0f;
    for (int oy = px.rows.lo; oy < px.rows.hi; ++oy) {
        const int i = px.y + g.pad - oy * g.stride;
        for (int ox = px.cols.lo; ox < px.cols.hi; ++ox) {
            const int j = px.xx + g.pad - ox * g.stride;
            acc += to_float(taps[i * g.kw + j]) * to_float(grad[oy * g.wo + ox]);
        }
    }
    dx[input_offset(g, px)] = from_float<T>(acc);
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
