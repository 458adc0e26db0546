// Element-wise kernels (casts, binary and unary ops, the fused bias + activation, QuickGELU or
// GELU, that cuBLASLt has no epilogue for), deterministic sums over a middle dimension, and the
// row-wise softmax and L2 normalisation. All math is fp32; T in {float, bf16} is only the
// storage format.
#include "vector_io.cuh"

// ---- Element maps: grid-stride over 16-byte packs, then a scalar tail. Tensors start
// 256-byte aligned, so every pack of N elements at an offset that is a multiple of N is
// 16-byte aligned. ----

// y[i] = f(x[i]), in packs of the wider type's 16 bytes: a cast from bf16 then reads 8 bytes
// and stores 16 per lane, where 8-element packs would store 32 bytes per lane in two half-used
// sector sets (60% sector efficiency, measured by `msclip profile kernels`).
template <typename Tin, typename Tout, typename F>
__device__ __forceinline__ void map1(const Tin* __restrict__ x, Tout* __restrict__ y, int n, F f) {
    constexpr int N = sizeof(Tin) > sizeof(Tout) ? kPack<Tin> : kPack<Tout>;
    const unsigned packs = static_cast<unsigned>(n) / N;
    for (unsigned p = grid_thread(); p < packs; p += grid_threads()) {
        float v[N];
        load_floats<Tin, N>(x + p * N, v);
        for (int k = 0; k < N; ++k) v[k] = f(v[k]);
        store_floats<Tout, N>(y + p * N, v);
    }
    for (unsigned i = packs * N + grid_thread(); i < static_cast<unsigned>(n); i += grid_threads()) {
        y[i] = from_float<Tout>(f(to_float(x[i])));
    }
}

// out[i] = f(a[i], b[i % period]). Packs need b's pack to be contiguous too: `period` is a
// multiple of N, or b is as long as a.
template <typename T, typename F>
__device__ __forceinline__ void map2_periodic(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                              int n, int period, F f) {
    constexpr int N = kPack<T>;
    const bool vec = period % N == 0 || period == n;
    const unsigned packs = vec ? static_cast<unsigned>(n) / N : 0;
    for (unsigned p = grid_thread(); p < packs; p += grid_threads()) {
        float va[N], vb[N];
        load_floats<T, N>(a + p * N, va);
        load_floats<T, N>(b + (p * N) % period, vb);
        for (int k = 0; k < N; ++k) va[k] = f(va[k], vb[k]);
        store_floats<T, N>(out + p * N, va);
    }
    for (unsigned i = packs * N + grid_thread(); i < static_cast<unsigned>(n); i += grid_threads()) {
        out[i] = from_float<T>(f(to_float(a[i]), to_float(b[i % period])));
    }
}

// out[i] = f(a[i], b[i], c[i]).
template <typename T, typename F>
__device__ __forceinline__ void map3(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
                                     T* __restrict__ out, int n, F f) {
    constexpr int N = kPack<T>;
    const unsigned packs = static_cast<unsigned>(n) / N;
    for (unsigned p = grid_thread(); p < packs; p += grid_threads()) {
        float va[N], vb[N], vc[N];
        load_floats<T, N>(a + p * N, va);
        load_floats<T, N>(b + p * N, vb);
        load_floats<T, N>(c + p * N, vc);
        for (int k = 0; k < N; ++k) va[k] = f(va[k], vb[k], vc[k]);
        store_floats<T, N>(out + p * N, va);
    }
    for (unsigned i = packs * N + grid_thread(); i < static_cast<unsigned>(n); i += grid_threads()) {
        out[i] = from_float<T>(f(to_float(a[i]), to_float(b[i]), to_float(c[i])));
    }
}

// ---- Casts (round to nearest even). ----

extern "C" __global__ void cast_f32_to_bf16(const float* x, bf16* y, int n) {
    map1(x, y, n, [](float v) { return v; });
}
extern "C" __global__ void cast_bf16_to_f32(const bf16* x, float* y, int n) {
    map1(x, y, n, [](float v) { return v; });
}

// ---- Binary ops; codes as BinaryOp in src/backend/gpu/elementwise.rs. ----

enum BinaryCode { kAdd = 0, kSub = 1, kMul = 2 };

template <typename T>
__device__ void binary(const T* a, const T* b, T* out, int n, int period, int op) {
    switch (op) {
        case kAdd: map2_periodic(a, b, out, n, period, [](float u, float v) { return u + v; }); break;
        case kSub: map2_periodic(a, b, out, n, period, [](float u, float v) { return u - v; }); break;
        default: map2_periodic(a, b, out, n, period, [](float u, float v) { return u * v; }); break;
    }
}

// ---- Unary ops and their backward; codes as UnaryOp in src/backend/gpu/elementwise.rs. ----

enum UnaryCode { kExp = 0, kLn = 1, kRelu = 2, kQuickGelu = 3, kScale = 4, kGelu = 5 };

constexpr float kQuickGeluAlpha = 1.702f;
constexpr float kFrac1Sqrt2 = 0.70710678118654752f;
constexpr float kFrac1Sqrt2Pi = 0.39894228040143268f;

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

// The MLP activations, value and derivative, as types: the fused bias kernels are templated on
// them.
struct QuickGelu {
    __device__ __forceinline__ static float value(float v) { return v * sigmoid(kQuickGeluAlpha * v); }
    // d/dv of v * sigmoid(a v) = s + a v s (1 - s).
    __device__ __forceinline__ static float grad(float v) {
        const float s = sigmoid(kQuickGeluAlpha * v);
        return s + kQuickGeluAlpha * v * s * (1.0f - s);
    }
};

// The exact GELU (torch.nn.GELU): v Phi(v) = 0.5 v (1 + erf(v / sqrt 2)).
struct Gelu {
    __device__ __forceinline__ static float value(float v) { return v * 0.5f * (1.0f + erff(v * kFrac1Sqrt2)); }
    // Phi(v) + v phi(v).
    __device__ __forceinline__ static float grad(float v) {
        const float cdf = 0.5f * (1.0f + erff(v * kFrac1Sqrt2));
        return cdf + v * kFrac1Sqrt2Pi * expf(-0.5f * v * v);
    }
};

template <typename T>
__device__ void unary(const T* x, T* y, int n, int op, float c) {
    switch (op) {
        case kExp: map1(x, y, n, [](float v) { return expf(v); }); break;
        case kLn: map1(x, y, n, [](float v) { return logf(v); }); break;
        case kRelu: map1(x, y, n, [](float v) { return fmaxf(v, 0.0f); }); break;
        case kQuickGelu: map1(x, y, n, [](float v) { return QuickGelu::value(v); }); break;
        case kGelu: map1(x, y, n, [](float v) { return Gelu::value(v); }); break;
        default: map1(x, y, n, [c](float v) { return v * c; }); break;
    }
}

// dx from x, y = op(x) and dy.
template <typename T>
__device__ void unary_backward(const T* x, const T* y, const T* dy, T* dx, int n, int op, float c) {
    switch (op) {
        case kExp: map3(x, y, dy, dx, n, [](float, float v, float g) { return g * v; }); break;
        case kLn: map3(x, y, dy, dx, n, [](float v, float, float g) { return g / v; }); break;
        case kRelu: map3(x, y, dy, dx, n, [](float v, float, float g) { return v > 0.0f ? g : 0.0f; }); break;
        case kQuickGelu: map3(x, y, dy, dx, n, [](float v, float, float g) { return g * QuickGelu::grad(v); }); break;
        case kGelu: map3(x, y, dy, dx, n, [](float v, float, float g) { return g * Gelu::grad(v); }); break;
        default: map3(x, y, dy, dx, n, [c](float, float, float g) { return g * c; }); break;
    }
}

// ---- Bias + activation: y = Act::value(x + bias), bias [width] repeated over the rows. ----

template <typename Act, typename T>
__device__ void bias_activation(const T* x, const T* bias, T* y, int n, int width) {
    map2_periodic(x, bias, y, n, width, [](float v, float b) { return Act::value(v + b); });
}

// ---- Column sums in row chunks: the deterministic reduction behind sum_middle and d bias. ----
//
// x is [outer, n, inner]; rows (the middle index) are dealt to `chunks` = ceil(n /
// rows_per_chunk) chunks round-robin (chunk c holds rows c, c + chunks, ...), and one thread
// owns N adjacent columns of one chunk of one outer index, summing its rows in increasing
// order in fp32: out[o, chunk, j]. A second launch over the chunks (or a single chunk from the
// start) gives the sums; the order of every addition depends on the shape only, never on
// scheduling, and nothing is atomic. Dealing rows round-robin keeps a narrow sum coalesced:
// where a row has fewer packs than a warp has lanes, the lanes of a warp hold neighbouring
// chunks, which read neighbouring rows (contiguous chunks put their rows rows_per_chunk apart:
// 32 sectors per request, measured by `msclip profile kernels`).

template <int N, typename F>
__device__ __forceinline__ void for_each_column_chunk(int outer, int n, int inner, int rows_per_chunk, F f) {
    const int chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
    const unsigned packs = inner / N;
    const unsigned total = static_cast<unsigned>(outer) * chunks * packs;
    for (unsigned t = grid_thread(); t < total; t += grid_threads()) {
        const int column = static_cast<int>(t % packs) * N;
        const unsigned rest = t / packs;
        const int chunk = static_cast<int>(rest % chunks);
        const int o = static_cast<int>(rest / chunks);
        f(o, chunk, chunks, column);
    }
}

template <typename Tin, typename Tout, int N>
__device__ __forceinline__ void sum_chunks(const Tin* __restrict__ x, Tout* __restrict__ out, int outer, int n,
                                           int inner, int rows_per_chunk) {
    for_each_column_chunk<N>(outer, n, inner, rows_per_chunk, [&](int o, int chunk, int chunks, int column) {
        float acc[N] = {};
        const Tin* base = x + static_cast<size_t>(o) * n * inner + column;
        for (int r = chunk; r < n; r += chunks) {
            float v[N];
            load_floats<Tin, N>(base + static_cast<size_t>(r) * inner, v);
            for (int k = 0; k < N; ++k) acc[k] += v[k];
        }
        store_floats<Tout, N>(out + (static_cast<size_t>(o) * chunks + chunk) * inner + column, acc);
    });
}

// `vec`: inner is a multiple of the pack width of Tin.
template <typename Tin, typename Tout>
__device__ void sum_middle(const Tin* x, Tout* out, int outer, int n, int inner, int rows_per_chunk, int vec) {
    if (vec) {
        sum_chunks<Tin, Tout, kPack<Tin>>(x, out, outer, n, inner, rows_per_chunk);
    } else {
        sum_chunks<Tin, Tout, 1>(x, out, outer, n, inner, rows_per_chunk);
    }
}

// First pass of a bf16 sum: fp32 partial sums, so the result is rounded once.
extern "C" __global__ void sum_middle_bf16_to_f32(const bf16* x, float* out, int outer, int n, int inner,
                                                  int rows_per_chunk, int vec) {
    sum_middle(x, out, outer, n, inner, rows_per_chunk, vec);
}
// Last pass of a bf16 sum over fp32 partials.
extern "C" __global__ void sum_middle_f32_to_bf16(const float* x, bf16* out, int outer, int n, int inner,
                                                  int rows_per_chunk, int vec) {
    sum_middle(x, out, outer, n, inner, rows_per_chunk, vec);
}

// Backward of bias + activation over [rows, width]: dx = dy * Act::grad(x + bias), and the fp32
// partial column sums of dx per row chunk, [chunks, width], which sum_middle_f32(_to_bf16)
// reduces to d bias.
template <typename Act, typename T, int N>
__device__ __forceinline__ void bias_activation_backward_chunks(const T* __restrict__ x, const T* __restrict__ bias,
                                                                const T* __restrict__ dy, T* __restrict__ dx,
                                                                float* __restrict__ partial, int rows, int width,
                                                                int rows_per_chunk) {
    for_each_column_chunk<N>(1, rows, width, rows_per_chunk, [&](int, int chunk, int chunks, int column) {
        float b[N], acc[N] = {};
        load_floats<T, N>(bias + column, b);
        for (int r = chunk; r < rows; r += chunks) {
            const size_t at = static_cast<size_t>(r) * width + column;
            float v[N], g[N];
            load_floats<T, N>(x + at, v);
            load_floats<T, N>(dy + at, g);
            for (int k = 0; k < N; ++k) {
                g[k] *= Act::grad(v[k] + b[k]);
                acc[k] += g[k];
            }
            store_floats<T, N>(dx + at, g);
        }
        store_floats<float, N>(partial + static_cast<size_t>(chunk) * width + column, acc);
    });
}

template <typename Act, typename T>
__device__ void bias_activation_backward(const T* x, const T* bias, const T* dy, T* dx, float* partial, int rows,
                                         int width, int rows_per_chunk, int vec) {
    if (vec) {
        bias_activation_backward_chunks<Act, T, kPack<T>>(x, bias, dy, dx, partial, rows, width, rows_per_chunk);
    } else {
        bias_activation_backward_chunks<Act, T, 1>(x, bias, dy, dx, partial, rows, width, rows_per_chunk);
    }
}

// ---- Row-wise ops over the last dimension, one warp per row. `vec`: d is a multiple of the
// pack width, so rows start 16-byte aligned. ----

// Softmax of each row; a row that is entirely -inf (fully masked) gives zeros.
template <typename T>
__device__ void softmax(const T* x, T* y, int rows, int d, int vec) {
    for_each_warp_row(rows, [&](int row) {
        const T* in = x + static_cast<size_t>(row) * d;
        T* out = y + static_cast<size_t>(row) * d;
        MaxSum lane_state;
        row_visit(in, in, d, vec, [&](int, float v, float) { lane_state.add(v); });
        const MaxSum s = lane_state.warp_combine();
        const bool masked = s.max == -INFINITY;
        row_map(in, in, out, d, vec, [&](int, float v, float) { return masked ? 0.0f : expf(v - s.max) / s.sum; });
    });
}

// dot(a row, b row), in every lane of the warp.
template <typename T>
__device__ __forceinline__ float row_dot(const T* a, const T* b, int d, int vec) {
    float acc = 0.0f;
    row_visit(a, b, d, vec, [&](int, float u, float v) { acc += u * v; });
    return warp_sum(acc);
}

// dx = y * (dy - <y, dy>).
template <typename T>
__device__ void softmax_backward(const T* y, const T* dy, T* dx, int rows, int d, int vec) {
    for_each_warp_row(rows, [&](int row) {
        const size_t at = static_cast<size_t>(row) * d;
        const float dot = row_dot(y + at, dy + at, d, vec);
        row_map(y + at, dy + at, dx + at, d, vec, [&](int, float v, float g) { return v * (g - dot); });
    });
}

// y = x / max(||x||, eps) per row; the fp32 norms are saved for backward.
template <typename T>
__device__ void l2_normalize(const T* x, T* y, float* norms, int rows, int d, int vec, float eps) {
    for_each_warp_row(rows, [&](int row) {
        const size_t at = static_cast<size_t>(row) * d;
        const float norm = sqrtf(row_dot(x + at, x + at, d, vec));
        const float denom = fmaxf(norm, eps);
        row_map(x + at, x + at, y + at, d, vec, [&](int, float v, float) { return v / denom; });
        if (threadIdx.x % 32 == 0) norms[row] = norm;
    });
}

// Above eps: dx = (dy - y <dy, y>) / ||x||; below it the denominator was the constant eps.
template <typename T>
__device__ void l2_normalize_backward(const T* y, const float* norms, const T* dy, T* dx, int rows, int d, int vec,
                                      float eps) {
    for_each_warp_row(rows, [&](int row) {
        const size_t at = static_cast<size_t>(row) * d;
        const float norm = norms[row];
        if (norm > eps) {
            const float dot = row_dot(y + at, dy + at, d, vec);
            row_map(y + at, dy + at, dx + at, d, vec, [&](int, float v, float g) { return (g - v * dot) / norm; });
        } else {
            row_map(y + at, dy + at, dx + at, d, vec, [&](int, float, float g) { return g / eps; });
        }
    });
}

// The fused bias + activation pair of one activation: NAME_SUFFIX and NAME_backward_SUFFIX.
#define BIAS_ACTIVATION_ENTRY_POINTS(T, SUFFIX, NAME, ACT)                                                             \
    extern "C" __global__ void NAME##_##SUFFIX(const T* x, const T* bias, T* y, int n, int width) {                    \
        bias_activation<ACT>(x, bias, y, n, width);                                                                    \
    }                                                                                                                  \
    extern "C" __global__ void NAME##_backward_##SUFFIX(const T* x, const T* bias, const T* dy, T* dx, float* partial, \
                                                        int rows, int width, int rows_per_chunk, int vec) {            \
        bias_activation_backward<ACT>(x, bias, dy, dx, partial, rows, width, rows_per_chunk, vec);                     \
    }

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define ELEMENTWISE_ENTRY_POINTS(T, SUFFIX)                                                                            \
    extern "C" __global__ void binary_##SUFFIX(const T* a, const T* b, T* out, int n, int period, int op) {            \
        binary(a, b, out, n, period, op);                                                                              \
    }                                                                                                                  \
    extern "C" __global__ void unary_##SUFFIX(const T* x, T* y, int n, int op, float c) {                              \
        unary(x, y, n, op, c);                                                                                         \
    }                                                                                                                  \
    extern "C" __global__ void unary_backward_##SUFFIX(const T* x, const T* y, const T* dy, T* dx, int n, int op,      \
                                                       float c) {                                                      \
        unary_backward(x, y, dy, dx, n, op, c);                                                                        \
    }                                                                                                                  \
    BIAS_ACTIVATION_ENTRY_POINTS(T, SUFFIX, bias_quick_gelu, QuickGelu)                                                \
    BIAS_ACTIVATION_ENTRY_POINTS(T, SUFFIX, bias_gelu, Gelu)                                                           \
    extern "C" __global__ void sum_middle_##SUFFIX(const T* x, T* out, int outer, int n, int inner,                    \
                                                   int rows_per_chunk, int vec) {                                      \
        sum_middle(x, out, outer, n, inner, rows_per_chunk, vec);                                                      \
    }                                                                                                                  \
    extern "C" __global__ void softmax_##SUFFIX(const T* x, T* y, int rows, int d, int vec) {                          \
        softmax(x, y, rows, d, vec);                                                                                   \
    }                                                                                                                  \
    extern "C" __global__ void softmax_backward_##SUFFIX(const T* y, const T* dy, T* dx, int rows, int d, int vec) {   \
        softmax_backward(y, dy, dx, rows, d, vec);                                                                     \
    }                                                                                                                  \
    extern "C" __global__ void l2_normalize_##SUFFIX(const T* x, T* y, float* norms, int rows, int d, int vec,         \
                                                     float eps) {                                                      \
        l2_normalize(x, y, norms, rows, d, vec, eps);                                                                  \
    }                                                                                                                  \
    extern "C" __global__ void l2_normalize_backward_##SUFFIX(const T* y, const float* norms, const T* dy, T* dx,      \
                                                              int rows, int d, int vec, float eps) {                   \
        l2_normalize_backward(y, norms, dy, dx, rows, d, vec, eps);                                                    \
    }

ELEMENTWISE_ENTRY_POINTS(float, f32)
ELEMENTWISE_ENTRY_POINTS(bf16, bf16)
