// Vector loads and stores and grid-stride helpers shared by the memory-bound families
// (elementwise.cu, layout.cu, loss.cu). Their kernels are bandwidth-bound, so the one thing
// that matters is moving 16 bytes per thread per access where the layout allows it.
#pragma once

#include "common.cuh"

// Elements of T in one 128-bit access: 4 floats or 8 bf16.
template <typename T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

// Index of this thread in the grid and the stride of a grid-stride loop: launches bound their
// grids, so one thread may visit many items. Item counts are below 2^31 (the host checks), so
// an unsigned index plus the stride never wraps, and 32-bit division stays cheap.
__device__ __forceinline__ unsigned grid_thread() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned grid_threads() { return gridDim.x * blockDim.x; }

// Copies N elements of T through the widest accesses their byte count allows; `src` and `dst`
// are aligned to that width (the callers only vectorise offsets that are multiples of N).
template <typename T, int N>
__device__ __forceinline__ void copy_elements(T* dst, const T* src) {
    constexpr int bytes = N * static_cast<int>(sizeof(T));
    if constexpr (bytes % 16 == 0) {
        for (int k = 0; k < bytes / 16; ++k) reinterpret_cast<uint4*>(dst)[k] = reinterpret_cast<const uint4*>(src)[k];
    } else if constexpr (bytes % 8 == 0) {
        for (int k = 0; k < bytes / 8; ++k) reinterpret_cast<uint2*>(dst)[k] = reinterpret_cast<const uint2*>(src)[k];
    } else {
        for (int k = 0; k < N; ++k) dst[k] = src[k];
    }
}

// N consecutive elements widened to fp32.
template <typename T, int N>
__device__ __forceinline__ void load_floats(const T* p, float (&f)[N]) {
    alignas(16) T raw[N];
    copy_elements<T, N>(raw, p);
    for (int k = 0; k < N; ++k) f[k] = to_float(raw[k]);
}

// N fp32 values rounded to T and stored consecutively.
template <typename T, int N>
__device__ __forceinline__ void store_floats(T* p, const float (&f)[N]) {
    alignas(16) T raw[N];
    for (int k = 0; k < N; ++k) raw[k] = from_float<T>(f[k]);
    copy_elements<T, N>(p, raw);
}

// N elements at a and at b, widened to fp32. Callers that read one tensor pass it as both (see
// row_visit): it is then read once, where the compiler would fold the repeated load anyway, and
// the emulator's profiler, which counts every load the source makes, counts it once too.
template <typename T, int N>
__device__ __forceinline__ void load_pair(const T* a, const T* b, float (&fa)[N], float (&fb)[N]) {
    load_floats<T, N>(a, fa);
    if (b == a) {
        for (int k = 0; k < N; ++k) fb[k] = fa[k];
    } else {
        load_floats<T, N>(b, fb);
    }
}

// ---- One warp per row. ----
// Lane `lane` of the warp owning a row of width d visits elements lane, lane + 32, ... (or
// packs of N when `vec`, i.e. d is a multiple of N so every row starts 16-byte aligned).

// f(j, a[j], b[j]) for the elements of the row this lane owns (pass a twice to read one row:
// it is read once, load_pair).
template <typename T, typename F>
__device__ __forceinline__ void row_visit(const T* a, const T* b, int d, bool vec, F f) {
    constexpr int N = kPack<T>;
    const int lane = threadIdx.x % 32;
    if (vec) {
        for (int p = lane; p < d / N; p += 32) {
            float va[N], vb[N];
            load_pair<T, N>(a + p * N, b + p * N, va, vb);
            for (int k = 0; k < N; ++k) f(p * N + k, va[k], vb[k]);
        }
    } else {
        for (int j = lane; j < d; j += 32) {
            float va[1], vb[1];
            load_pair<T, 1>(a + j, b + j, va, vb);
            f(j, va[0], vb[0]);
        }
    }
}

// out[j] = f(j, a[j], b[j]) for the elements of the row this lane owns.
template <typename T, typename F>
__device__ __forceinline__ void row_map(const T* a, const T* b, T* out, int d, bool vec, F f) {
    constexpr int N = kPack<T>;
    const int lane = threadIdx.x % 32;
    if (vec) {
        for (int p = lane; p < d / N; p += 32) {
            float va[N], vb[N], o[N];
            load_pair<T, N>(a + p * N, b + p * N, va, vb);
            for (int k = 0; k < N; ++k) o[k] = f(p * N + k, va[k], vb[k]);
            store_floats<T, N>(out + p * N, o);
        }
    } else {
        for (int j = lane; j < d; j += 32) {
            float va[1], vb[1];
            load_pair<T, 1>(a + j, b + j, va, vb);
            out[j] = from_float<T>(f(j, va[0], vb[0]));
        }
    }
}

// f(j, a[j], b[j], c[j]) for the elements of the row this lane owns: three inputs, each read in
// packs (a scalar read per element would touch each sector N times).
template <typename T, typename F>
__device__ __forceinline__ void row_visit3(const T* a, const T* b, const T* c, int d, bool vec, F f) {
    constexpr int N = kPack<T>;
    const int lane = threadIdx.x % 32;
    if (vec) {
        for (int p = lane; p < d / N; p += 32) {
            float va[N], vb[N], vc[N];
            load_floats<T, N>(a + p * N, va);
            load_floats<T, N>(b + p * N, vb);
            load_floats<T, N>(c + p * N, vc);
            for (int k = 0; k < N; ++k) f(p * N + k, va[k], vb[k], vc[k]);
        }
    } else {
        for (int j = lane; j < d; j += 32) f(j, to_float(a[j]), to_float(b[j]), to_float(c[j]));
    }
}

// out[j] = f(j, a[j], b[j], c[j]) + plus[j], or without `plus` where it is null (the same for
// the whole row, so the branch does not diverge): the sum is formed in fp32 and rounded once.
template <typename T, typename F>
__device__ __forceinline__ void row_map3_plus(const T* a, const T* b, const T* c, const T* plus, T* out, int d,
                                              bool vec, F f) {
    constexpr int N = kPack<T>;
    const int lane = threadIdx.x % 32;
    if (vec) {
        for (int p = lane; p < d / N; p += 32) {
            float va[N], vb[N], vc[N], o[N];
            load_floats<T, N>(a + p * N, va);
            load_floats<T, N>(b + p * N, vb);
            load_floats<T, N>(c + p * N, vc);
            for (int k = 0; k < N; ++k) o[k] = f(p * N + k, va[k], vb[k], vc[k]);
            if (plus != nullptr) {
                float vp[N];
                load_floats<T, N>(plus + p * N, vp);
                for (int k = 0; k < N; ++k) o[k] += vp[k];
            }
            store_floats<T, N>(out + p * N, o);
        }
    } else {
        for (int j = lane; j < d; j += 32) {
            const float o = f(j, to_float(a[j]), to_float(b[j]), to_float(c[j]));
            out[j] = from_float<T>(plus != nullptr ? o + to_float(plus[j]) : o);
        }
    }
}

// out[j] = f(j, a[j], b[j], c[j]) for the elements of the row this lane owns: row_map with a
// third input, every input and the output moved in packs.
template <typename T, typename F>
__device__ __forceinline__ void row_map3(const T* a, const T* b, const T* c, T* out, int d, bool vec, F f) {
    row_map3_plus(a, b, c, static_cast<const T*>(nullptr), out, d, vec, f);
}

// f(row) for the rows this warp owns in a grid-stride loop over `rows`. The loop bound is the
// same for every lane, so warp reductions inside f see all 32 lanes.
template <typename F>
__device__ __forceinline__ void for_each_warp_row(int rows, F f) {
    for (unsigned row = grid_thread() / 32; row < static_cast<unsigned>(rows); row += grid_threads() / 32) {
        f(static_cast<int>(row));
    }
}

// Log-sum-exp state of the elements one lane has seen: running max and the sum of
// exp(v - max). -inf elements add nothing (a fully masked row stays at max = -inf, sum = 0);
// NaN propagates into the sum.
struct MaxSum {
    float max = -INFINITY;
    float sum = 0.0f;
    __device__ __forceinline__ void add(float v) {
        if (v > max) {
            sum = sum * expf(max - v) + 1.0f;
            max = v;
        } else if (v != -INFINITY) {
            sum += expf(v - max);
        }
    }
    // The row's state in every lane of the warp.
    __device__ __forceinline__ MaxSum warp_combine() const {
        MaxSum all;
        all.max = warp_max(max);
        all.sum = warp_sum(max == -INFINITY ? 0.0f : sum * expf(max - all.max));
        return all;
    }
};
