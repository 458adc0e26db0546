// 2-D convolution, NCHW, weight [C_out, C_in/groups, kh, kw], no bias; the semantics of
// src/backend/cpu/conv.rs.
//
// Dense and grouped convolutions are im2col + GEMM: im2col writes the patches of the whole
// batch as one [C_in*kh*kw, N*Ho*Wo] matrix, whose row blocks are the groups, so one batched
// GEMM over the groups (the driver's, cuBLASLt on a GPU) multiplies them by the weight
// [groups, C_out/groups, C_in/groups*kh*kw]. The product comes out channel-major
// ([C_out, N, Ho*Wo]); swap_outer moves it to NCHW (and dy the other way in backward). Dense
// convolutions on large planes lay the patches out sample-major instead ([N, C_in*kh*kw,
// Ho*Wo], `sample_major`), so that a GEMM per sample, the weight shared, reads and writes NCHW
// as it lies and no swap is needed.
// col2im gathers the column gradient back into the image: each input pixel sums its taps in
// a fixed order, so there are no atomics and the result is deterministic.
//
// Depthwise convolutions (groups == C_in == C_out) have dedicated kernels: one thread per
// output (forward; one warp per output for kernels of 32 taps or more) or input (dx) element,
// and for dW blocks per (channel, chunk of samples) whose threads own taps, then a sum over the
// chunks in a fixed order.
#include "vector_io.cuh"

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

// Where the patch matrix's entry for row r = (ch*kh + i)*kw + j, sample s and output pixel p
// lies: col[r * row + s * sample + p]. Channel-major ([rows, N*Ho*Wo], one GEMM over the batch):
// row = N*Ho*Wo, sample = Ho*Wo. Sample-major ([N, rows, Ho*Wo], a GEMM per sample): row =
// Ho*Wo, sample = rows*Ho*Wo.
struct ColumnLayout {
    size_t row, sample;
};

__device__ __forceinline__ ColumnLayout column_layout(ConvGeometry g, int sample_major) {
    const size_t plane_out = static_cast<size_t>(g.ho) * g.wo;
    if (sample_major) return ColumnLayout{plane_out, static_cast<size_t>(g.c) * g.kh * g.kw * plane_out};
    return ColumnLayout{static_cast<size_t>(g.n) * plane_out, plane_out};
}

// col at (row (ch*kh + i)*kw + j, sample s, pixel (oy, ox)) = x[s][ch][oy*stride + i - pad][ox*stride + j - pad],
// zero outside the image. Thread (ch, oy, ox) of sample s writes the kh*kw rows of its channel;
// consecutive threads write consecutive columns.
template <typename T>
__device__ __forceinline__ void im2col(const T* __restrict__ x, T* __restrict__ col, ConvGeometry g,
                                       int sample_major) {
    const int plane_out = g.ho * g.wo;
    const int e = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y;
    if (e >= g.c * plane_out) return;
    const int ch = e / plane_out, p = e - ch * plane_out;
    const int oy = p / g.wo, ox = p - oy * g.wo;
    const ColumnLayout layout = column_layout(g, sample_major);
    const T* img = x + (static_cast<size_t>(s) * g.c + ch) * g.h * g.w;
    T* out = col + static_cast<size_t>(ch) * g.kh * g.kw * layout.row + s * layout.sample + p;
    for (int i = 0; i < g.kh; ++i) {
        const int y = oy * g.stride + i - g.pad;
        for (int j = 0; j < g.kw; ++j, out += layout.row) {
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
// that tap and output pixel. Gathered per input element, in a fixed order: no atomics. This
// one-pixel-per-thread form serves strides above 2 (no model layer has one: a patchify conv's
// input is the image); col2im_tiles below serves strides 1 and 2.
template <typename T>
__device__ __forceinline__ void col2im_pixels(const T* __restrict__ col, T* __restrict__ dx, ConvGeometry g,
                                              ColumnLayout layout) {
    InputPixel px;
    if (!input_pixel(g, px)) return;
    const T* sample = col + blockIdx.y * layout.sample;
    float acc = 0.0f;
    for (int oy = px.rows.lo; oy < px.rows.hi; ++oy) {
        const int i = px.y + g.pad - oy * g.stride;
        for (int ox = px.cols.lo; ox < px.cols.hi; ++ox) {
            const int j = px.xx + g.pad - ox * g.stride;
            acc += to_float(sample[((px.ch * g.kh + i) * g.kw + j) * layout.row + oy * g.wo + ox]);
        }
    }
    dx[input_offset(g, px)] = from_float<T>(acc);
}

// The S pixels of a tile row as one store where they make a 4- or 8-byte word (two bf16 or two
// floats); `out` is aligned to it.
template <typename T, int S>
__device__ __forceinline__ void store_tile_row(T* out, const float (&acc)[S]) {
    T row[S];
    for (int k = 0; k < S; ++k) row[k] = from_float<T>(acc[k]);
    if constexpr (sizeof(row) == 4) {
        uint32_t word;
        memcpy(&word, row, sizeof word);
        *reinterpret_cast<uint32_t*>(out) = word;
    } else if constexpr (sizeof(row) == 8) {
        uint64_t word;
        memcpy(&word, row, sizeof word);
        *reinterpret_cast<uint64_t*>(out) = word;
    } else {
        for (int k = 0; k < S; ++k) out[k] = row[k];
    }
}

// col2im for stride S (1 or 2, known at compile time). Thread (ch, p, q) of sample blockIdx.y
// sums the S x S tile of input pixels y in [p * S, + S), xx in [q * S, + S), row-major over the
// tiles: two divisions a thread instead of six a pixel (the one-pixel form, bound by index
// arithmetic, took 8.8 ms of an H200's msclip-s-b16 step), and every lane of a warp takes the
// same taps, so no lane waits for another. Along an axis, position v (u = v + pad) is read by the
// taps i = u % S + m * S at output u / S - m; within a tile the offset a = v - p * S fixes
// u % S and u / S - p, so lane (p, q) reads tap row (i, j) of the column matrix at
// (p + c) * Wo + q + c' for constants c, c': neighbouring lanes read neighbouring columns, across
// tile rows too when Wo equals the tiles a row (3x3 stride 2 padding 1 on an even width). A
// tile row's S pixels leave as one S-element store.
template <typename T, int S>
__device__ __forceinline__ void col2im_tiles(const T* __restrict__ col, T* __restrict__ dx, ConvGeometry g,
                                             ColumnLayout layout) {
    const int per_row = (g.w + S - 1) / S, tiles = per_row * ((g.h + S - 1) / S);
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= g.c * tiles) return;
    const int ch = e / tiles, rest = e - ch * tiles;
    const int p = rest / per_row, q = rest - p * per_row, x0 = q * S;
    const T* taps = col + static_cast<size_t>(ch) * g.kh * g.kw * layout.row + blockIdx.y * layout.sample;
    // A whole-tile store needs x0 * sizeof(T) aligned to the tile row: rows of a width that S divides.
    const bool whole = x0 + S <= g.w && g.w % S == 0;
    for (int a = 0; a < S && p * S + a < g.h; ++a) {
        float acc[S];
        for (int k = 0; k < S; ++k) acc[k] = 0.0f;
        const int u = g.pad + a;
        for (int i = u % S, oy = p + u / S; i < g.kh && oy >= 0; i += S, --oy) {
            if (oy >= g.ho) continue;
            const T* tap_row = taps + static_cast<size_t>(i) * g.kw * layout.row + oy * g.wo;
            for (int k = 0; k < S; ++k) {
                const int v = g.pad + k;
                for (int j = v % S, ox = q + v / S; j < g.kw && ox >= 0; j += S, --ox) {
                    if (ox < g.wo) acc[k] += to_float(tap_row[static_cast<size_t>(j) * layout.row + ox]);
                }
            }
        }
        T* out = dx + ((static_cast<size_t>(blockIdx.y) * g.c + ch) * g.h + p * S + a) * g.w + x0;
        if (whole) {
            store_tile_row<T, S>(out, acc);
        } else {
            for (int k = 0; k < S; ++k) {
                if (x0 + k < g.w) out[k] = from_float<T>(acc[k]);
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void col2im(const T* __restrict__ col, T* __restrict__ dx, ConvGeometry g,
                                       int sample_major) {
    const ColumnLayout layout = column_layout(g, sample_major);
    if (g.stride == 1) {
        col2im_tiles<T, 1>(col, dx, g, layout);
    } else if (g.stride == 2) {
        col2im_tiles<T, 2>(col, dx, g, layout);
    } else {
        col2im_pixels(col, dx, g, layout);
    }
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

// Depthwise forward for kernels of at least 32 taps (the parallel branch's strided
// downsamplings, 16x16 stride 16 and the like): a warp per output pixel, its lanes on the taps,
// tap columns fastest, so a warp reads whole runs of x; with a thread per output the lanes of a
// warp read pixels `stride` apart (16.8 sectors per request and 6% of each sector used on the
// 16x16 downsampling). The lanes' sums meet in warp_sum's fixed order: deterministic. Lane
// positions advance by 32 taps as (row, column) digits, no division in the loop.
template <typename T>
__device__ __forceinline__ void dwconv_fwd_warp(const T* __restrict__ x, const T* __restrict__ wt,
                                                T* __restrict__ out, ConvGeometry g) {
    const int lane = threadIdx.x % 32;
    const int step_i = 32 / g.kw, step_j = 32 - step_i * g.kw;
    const int plane_out = g.ho * g.wo;
    for_each_warp_row(g.n * g.c * plane_out, [&](int e) {
        const int plane = e / plane_out, p = e - plane * plane_out, ch = plane % g.c;
        const int oy = p / g.wo, ox = p - oy * g.wo;
        const T* img = x + static_cast<size_t>(plane) * g.h * g.w;
        const T* taps = wt + ch * g.kh * g.kw;
        float acc = 0.0f;
        for (int i = lane / g.kw, j = lane % g.kw; i < g.kh;) {
            const int y = oy * g.stride + i - g.pad, xx = ox * g.stride + j - g.pad;
            if (static_cast<unsigned>(y) < static_cast<unsigned>(g.h) &&
                static_cast<unsigned>(xx) < static_cast<unsigned>(g.w)) {
                acc += to_float(taps[i * g.kw + j]) * to_float(img[y * g.w + xx]);
            }
            i += step_i;
            j += step_j;
            if (j >= g.kw) {
                j -= g.kw;
                ++i;
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) out[e] = from_float<T>(acc);
    });
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

// Depthwise dW in two launches, no atomics, deterministic. dwconv_dw_partials: block
// (chunk, channel) sums dy * x over the chunk's `per_chunk` samples (the last chunk shorter) and
// every output pixel, for every tap of the channel, into
// partial[(channel * chunks + chunk) * taps + tap] (fp32). dwconv_dw_sum then adds each tap's
// chunks in chunk order. src/backend/gpu/conv.rs picks the chunks from the shape alone, so that
// a B/16 or B/32 batch makes thousands of blocks.
//
// Threads own taps, not output pixels: a thread keeps one tap's weight gradient in a register
// and walks the chunk's (sample, oy, ox) items, so x is read once per tap and dy is a
// broadcast. When the taps leave threads over, `groups` threads share a tap, each walking every
// groups-th item, and their sums meet in shared memory in group order. Thread q of a pass is
// (i, group, j) = tap row, group, tap column with j fastest: the lanes of a warp read
// neighbouring x (tap j and j + 1, and the next group's output pixel, are adjacent in x; for a
// kernel = stride patchify a warp reads whole rows). With more taps than threads (kernels over
// 16x16) each thread owns one tap per pass and the passes walk the chunk again. The walk
// advances (sample, oy, ox) by digits: no division inside the loop.
template <typename T>
__device__ __forceinline__ void dwconv_dw_partials(const T* __restrict__ x, const T* __restrict__ dy,
                                                   float* __restrict__ partial, ConvGeometry g, int chunks,
                                                   int per_chunk) {
    __shared__ float sums[CONV_THREADS];
    const int chunk = blockIdx.x, ch = blockIdx.y, t = threadIdx.x;
    const int first = chunk * per_chunk, samples = min(per_chunk, g.n - first);
    const int taps = g.kh * g.kw, plane_out = g.ho * g.wo, plane_in = g.h * g.w;
    const int threads = blockDim.x, groups = taps >= threads ? 1 : threads / taps;
    // The walk's step, `groups` items, as (samples, rows, columns) digits.
    const int step_s = groups / plane_out, step_p = groups - step_s * plane_out;
    const int step_y = step_p / g.wo, step_x = step_p - step_y * g.wo;
    for (int base = 0; base < taps * groups; base += threads) {
        const int q = base + t;
        const int j = q % g.kw, row = q / g.kw, group = row % groups, i = row / groups;
        float acc = 0.0f;
        if (i < g.kh) {
            int s = group / plane_out;
            const int p = group - s * plane_out;
            int oy = p / g.wo, ox = p - oy * g.wo;
            while (s < samples) {
                const int y = oy * g.stride + i - g.pad, xx = ox * g.stride + j - g.pad;
                if (static_cast<unsigned>(y) < static_cast<unsigned>(g.h) &&
                    static_cast<unsigned>(xx) < static_cast<unsigned>(g.w)) {
                    const size_t plane = static_cast<size_t>(first + s) * g.c + ch;
                    acc += to_float(dy[plane * plane_out + oy * g.wo + ox]) *
                           to_float(x[plane * plane_in + y * g.w + xx]);
                }
                ox += step_x;
                oy += step_y;
                s += step_s;
                if (ox >= g.wo) {
                    ox -= g.wo;
                    ++oy;
                }
                if (oy >= g.ho) {
                    oy -= g.ho;
                    ++s;
                }
            }
        }
        __syncthreads();  // the previous pass has read its sums
        sums[t] = acc;
        __syncthreads();
        // Thread t adds the groups of tap base + t (with groups > 1 there is one pass, base 0).
        const int tap = base + t;
        if (t < min(taps - base, threads)) {
            const int ti = tap / g.kw, tj = tap - ti * g.kw;
            float total = 0.0f;
            for (int k = 0; k < groups; ++k) total += sums[(ti * groups + k) * g.kw + tj - base];
            partial[(static_cast<size_t>(ch) * chunks + chunk) * taps + tap] = total;
        }
    }
}

// dw[ch][tap] = the sum of the channel's chunk partials in chunk order; thread (ch, tap), so
// neighbouring threads read neighbouring partials.
template <typename T>
__device__ __forceinline__ void dwconv_dw_sum(const float* __restrict__ partial, T* __restrict__ dw, int channels,
                                              int chunks, int taps) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= channels * taps) return;
    const int ch = e / taps, tap = e - ch * taps;
    const float* mine = partial + static_cast<size_t>(ch) * chunks * taps + tap;
    float acc = 0.0f;
    for (int k = 0; k < chunks; ++k) acc += mine[static_cast<size_t>(k) * taps];
    dw[e] = from_float<T>(acc);
}

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define CONV_ENTRY_POINTS(T, SUFFIX)                                                                                   \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        im2col_##SUFFIX(const T* x, T* col, CONV_GEOMETRY_PARAMS, int sample_major) {                                \
        im2col(x, col, CONV_GEOMETRY, sample_major);                                                                 \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        col2im_##SUFFIX(const T* col, T* dx, CONV_GEOMETRY_PARAMS, int sample_major) {                               \
        col2im(col, dx, CONV_GEOMETRY, sample_major);                                                                \
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
        dwconv_fwd_warp_##SUFFIX(const T* x, const T* weight, T* y, CONV_GEOMETRY_PARAMS) {                          \
        dwconv_fwd_warp(x, weight, y, CONV_GEOMETRY);                                                                \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        dwconv_dx_##SUFFIX(const T* dy, const T* weight, T* dx, CONV_GEOMETRY_PARAMS) {                              \
        dwconv_dx(dy, weight, dx, CONV_GEOMETRY);                                                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS) dwconv_dw_partials_##SUFFIX(                          \
        const T* x, const T* dy, float* partial, CONV_GEOMETRY_PARAMS, int chunks, int per_chunk) {                  \
        dwconv_dw_partials(x, dy, partial, CONV_GEOMETRY, chunks, per_chunk);                                        \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                                        \
        dwconv_dw_sum_##SUFFIX(const float* partial, T* dw, int channels, int chunks, int taps) {                    \
        dwconv_dw_sum(partial, dw, channels, chunks, taps);                                                          \
    }

CONV_ENTRY_POINTS(float, f32)
CONV_ENTRY_POINTS(bf16, bf16)
