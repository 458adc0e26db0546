// BatchNorm2d over the N, H and W of NCHW tensors; the semantics of
// src/backend/cpu/batchnorm.rs (biased variance, batch or fixed statistics).
//
// The reductions over a channel's N*H*W elements are split into `chunks` ranges of `per`
// consecutive elements (src/backend/gpu/batchnorm.rs picks them from the shape alone), one
// block per (channel, chunk), so a batch of 256 at 112x112 keeps every multiprocessor busy:
// one block per channel left most of the chip idle and took 16 ms for one stem layer on an
// H200. Each block writes its chunk's fp32 sums to partial tables; the next launch reduces a
// channel's partials in a fixed order in every block that needs them, so the statistics are
// deterministic. Training forward: the sums of x and x^2 about a shift (bn_shift) in one read
// of x, then y (the CPU takes two passes, the mean and then the squared deviations). Backward:
// sums of dy and dy * xhat, then dx. Mean and variance are stored in the tensor's dtype, as
// the CPU backend returns them.
//
// A ReLU after the BatchNorm can be fused in (`relu`): the forward writes relu(y) instead of y,
// and the backward masks dy itself, so the activation costs no pass of its own. The mask is
// recomputed from x with the per-channel scale and shift the forward applied, which every
// forward stores in fp32 (`affine`, [2, C]: scales, then shifts); both sides round y the same
// way (`bn_output`, `bn_relu_passes`), so they agree on every element's mask bit for bit.
#include "vector_io.cuh"

constexpr int BN_THREADS = 256;

struct BnShape {
    int n, c, hw;     // the tensor
    int chunks, per;  // each channel's N*H*W elements as `chunks` ranges of `per` (the last shorter)
    int pack;         // elements per access: it divides hw and per, so no pack crosses a plane
};

#define BN_SHAPE_PARAMS int n, int c, int hw, int chunks, int per, int pack
#define BN_SHAPE BnShape{n, c, hw, chunks, per, pack}

// Block b's channel and chunk.
__device__ __forceinline__ int bn_channel(BnShape s) { return blockIdx.x / s.chunks; }
__device__ __forceinline__ int bn_chunk(BnShape s) { return blockIdx.x % s.chunks; }

// Calls f(i) for the offsets i into x of this block's chunk's packs of P elements, one pack per
// thread per step. The (sample, position) pair advances by the block's stride; large planes need
// no division per pack.
template <int P, typename F>
__device__ __forceinline__ void bn_for_chunk(BnShape s, F f) {
    const int ch = bn_channel(s), start = bn_chunk(s) * s.per;
    const int end = min(start + s.per, s.n * s.hw), stride = static_cast<int>(blockDim.x) * P;
    int e = start + static_cast<int>(threadIdx.x) * P;
    int sample = e / s.hw, position = e - sample * s.hw;
    for (; e < end; e += stride) {
        f((static_cast<size_t>(sample) * s.c + ch) * s.hw + position);
        position += stride;
        if (position >= s.hw) {  // a division only where the stride crosses into the next sample
            sample += position / s.hw;
            position %= s.hw;
        }
    }
}

// A pack width as a type, for the generic lambdas of bn_with_pack.
template <int P>
struct Pack {
    static constexpr int width = P;
};

// f(Pack<P>{}) for the shape's pack width: 16 or 8 bytes per access where the plane allows it
// (src/backend/gpu/batchnorm.rs picks it), else one element.
template <typename T, typename F>
__device__ __forceinline__ void bn_with_pack(BnShape s, F f) {
    if (s.pack == kPack<T>) {
        f(Pack<kPack<T>>{});
    } else if (s.pack == kPack<T> / 2) {
        f(Pack<kPack<T> / 2>{});
    } else {
        f(Pack<1>{});
    }
}

// f(a[i], b[i]) for the elements of this block's chunk, both read in packs (pass a twice to read
// one tensor: it is read once, load_pair).
template <typename T, typename F>
__device__ __forceinline__ void bn_visit(BnShape s, const T* __restrict__ a, const T* __restrict__ b, F f) {
    bn_with_pack<T>(s, [&](auto pack) {
        constexpr int P = decltype(pack)::width;
        bn_for_chunk<P>(s, [&](size_t i) {
            float va[P], vb[P];
            load_pair<T, P>(a + i, b + i, va, vb);
            for (int k = 0; k < P; ++k) f(va[k], vb[k]);
        });
    });
}

// out[i] = f(a[i], b[i]) over this block's chunk, in packs.
template <typename T, typename F>
__device__ __forceinline__ void bn_map(BnShape s, const T* __restrict__ a, const T* __restrict__ b,
                                       T* __restrict__ out, F f) {
    bn_with_pack<T>(s, [&](auto pack) {
        constexpr int P = decltype(pack)::width;
        bn_for_chunk<P>(s, [&](size_t i) {
            float va[P], vb[P];
            load_pair<T, P>(a + i, b + i, va, vb);
            alignas(16) T result[P];
            for (int k = 0; k < P; ++k) result[k] = f(va[k], vb[k]);
            copy_elements<T, P>(out + i, result);
        });
    });
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

// A channel's y = x * scale + shift.
struct BnAffine {
    float scale, shift;
};

__device__ __forceinline__ BnAffine bn_affine(float mean, float var, float gamma, float beta, float eps) {
    const float rstd = 1.0f / sqrtf(var + eps);
    return {rstd * gamma, beta - mean * rstd * gamma};
}

__device__ __forceinline__ BnAffine bn_load_affine(const float* __restrict__ affine, int c, int ch) {
    return {affine[ch], affine[c + ch]};
}

__device__ __forceinline__ void bn_store_affine(float* __restrict__ affine, int c, int ch, BnAffine a) {
    affine[ch] = a.scale;
    affine[c + ch] = a.shift;
}

// y in the tensor's type, through the ReLU when it is fused. The explicit fmaf leaves the
// compiler no contraction to choose, so the backward's bn_relu_passes rounds the same bits.
template <typename T>
__device__ __forceinline__ T bn_output(float x, BnAffine a, bool relu) {
    const T y = from_float<T>(fmaf(x, a.scale, a.shift));
    return relu && !(to_float(y) > 0.0f) ? from_float<T>(0.0f) : y;
}

// Whether the fused ReLU passed this element's gradient: its rounded input was positive.
template <typename T>
__device__ __forceinline__ bool bn_relu_passes(float x, BnAffine a) {
    return to_float(from_float<T>(fmaf(x, a.scale, a.shift))) > 0.0f;
}

// The gradient g of an element of input v, zero where a fused ReLU cut it off.
template <typename T>
__device__ __forceinline__ float bn_upstream(float v, float g, bool relu, BnAffine a) {
    return !relu || bn_relu_passes<T>(v, a) ? g : 0.0f;
}

// The value the statistics are taken about: the channel's first element (sample 0, position 0).
// Sums of x - shift and (x - shift)^2 give the variance in one read of x as
// E[(x - shift)^2] - (E[x - shift])^2, which loses to rounding in proportion to
// (mean - shift)^2 / var: about 1 with the shift a value of the channel, where sums of x and x^2
// would lose mean^2 / var (the shifted-data method of computing a variance).
template <typename T>
__device__ __forceinline__ float bn_shift(const T* __restrict__ x, BnShape s) {
    return to_float(x[static_cast<size_t>(bn_channel(s)) * s.hw]);
}

// Pass 1 of training: the chunk's sums of x - shift and of its square.
template <typename T>
__device__ __forceinline__ void bn_shifted_sums(const T* __restrict__ x, float* __restrict__ sums,
                                                float* __restrict__ squares, BnShape s) {
    const float shift = bn_shift(x, s);
    float acc = 0.0f, acc_squares = 0.0f;
    bn_visit(s, x, x, [&](float v, float) {
        const float d = v - shift;
        acc += d;
        acc_squares += d * d;
    });
    bn_store_partial(sums, block_sum(acc));
    bn_store_partial(squares, block_sum(acc_squares));
}

// Pass 2: y = x * scale + shift over the chunk (then the ReLU, if fused); the first chunk
// stores the statistics and the affine.
template <typename T>
__device__ __forceinline__ void bn_normalise(const T* __restrict__ x, const T* __restrict__ gamma,
                                             const T* __restrict__ beta, const float* __restrict__ sums,
                                             const float* __restrict__ squares, T* __restrict__ y,
                                             T* __restrict__ mean_out, T* __restrict__ var_out,
                                             float* __restrict__ affine, BnShape s, float eps, int relu) {
    const int ch = bn_channel(s);
    const float count = static_cast<float>(s.n * s.hw);
    const float shifted_mean = bn_channel_total(sums, s) / count;
    const float mean = bn_shift(x, s) + shifted_mean;
    const float var = fmaxf(bn_channel_total(squares, s) / count - shifted_mean * shifted_mean, 0.0f);
    const BnAffine a = bn_affine(mean, var, to_float(gamma[ch]), to_float(beta[ch]), eps);
    bn_map(s, x, x, y, [&](float v, float) { return bn_output<T>(v, a, relu); });
    if (threadIdx.x == 0 && bn_chunk(s) == 0) {
        mean_out[ch] = from_float<T>(mean);
        var_out[ch] = from_float<T>(var);
        bn_store_affine(affine, s.c, ch, a);
    }
}

// y = x * scale + shift with the given statistics (then the ReLU, if fused); one thread per
// element, and the first c threads store the channels' affine.
template <typename T>
__device__ __forceinline__ void bn_eval(const T* __restrict__ x, const T* __restrict__ gamma,
                                        const T* __restrict__ beta, const T* __restrict__ mean,
                                        const T* __restrict__ var, T* __restrict__ y, float* __restrict__ affine,
                                        int n, int c, int hw, float eps, int relu) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    const auto channel_affine = [&](int ch) {
        return bn_affine(to_float(mean[ch]), to_float(var[ch]), to_float(gamma[ch]), to_float(beta[ch]), eps);
    };
    if (e < c) bn_store_affine(affine, c, e, channel_affine(e));
    if (e >= n * c * hw) return;
    y[e] = bn_output<T>(to_float(x[e]), channel_affine((e / hw) % c), relu);
}

// Backward pass 1: the chunk's sums of dy and of dy * xhat, dy masked by the fused ReLU (if
// `relu`) that the forward's `affine` recomputes.
template <typename T>
__device__ __forceinline__ void bn_backward_sums(const T* __restrict__ x, const T* __restrict__ mean,
                                                 const T* __restrict__ var, const float* __restrict__ affine,
                                                 const T* __restrict__ dy, float* __restrict__ dy_sums,
                                                 float* __restrict__ dy_xhat_sums, BnShape s, float eps, int relu) {
    const int ch = bn_channel(s);
    const float mu = to_float(mean[ch]);
    const float rstd = 1.0f / sqrtf(to_float(var[ch]) + eps);
    const BnAffine a = bn_load_affine(affine, s.c, ch);
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    bn_visit(s, x, dy, [&](float v, float upstream) {
        const float g = bn_upstream<T>(v, upstream, relu, a);
        sum_dy += g;
        sum_dy_xhat += g * ((v - mu) * rstd);
    });
    bn_store_partial(dy_sums, block_sum(sum_dy));
    bn_store_partial(dy_xhat_sums, block_sum(sum_dy_xhat));
}

// Backward pass 2: dbeta = sum dy, dgamma = sum dy * xhat (stored by the first chunk), and dx
// over the chunk; with batch statistics dx also carries the paths through the batch mean and
// variance. dy is masked as in pass 1.
template <typename T>
__device__ __forceinline__ void bn_backward_dx(const T* __restrict__ x, const T* __restrict__ gamma,
                                               const T* __restrict__ mean, const T* __restrict__ var,
                                               const float* __restrict__ affine, const T* __restrict__ dy,
                                               const float* __restrict__ dy_sums,
                                               const float* __restrict__ dy_xhat_sums, T* __restrict__ dx,
                                               T* __restrict__ dgamma, T* __restrict__ dbeta, BnShape s, float eps,
                                               int relu, int batch_stats) {
    const int ch = bn_channel(s);
    const float mu = to_float(mean[ch]);
    const float rstd = 1.0f / sqrtf(to_float(var[ch]) + eps);
    const BnAffine a = bn_load_affine(affine, s.c, ch);
    const float db = bn_channel_total(dy_sums, s), dg = bn_channel_total(dy_xhat_sums, s);
    const float scale = to_float(gamma[ch]) * rstd, total = static_cast<float>(s.n * s.hw);
    bn_map(s, x, dy, dx, [&](float v, float upstream) {
        const float g = bn_upstream<T>(v, upstream, relu, a);
        const float xhat = (v - mu) * rstd;
        return from_float<T>(batch_stats ? scale * (g - db / total - xhat * dg / total) : scale * g);
    });
    if (threadIdx.x == 0 && bn_chunk(s) == 0) {
        dgamma[ch] = from_float<T>(dg);
        dbeta[ch] = from_float<T>(db);
    }
}

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define BATCHNORM_ENTRY_POINTS(T, SUFFIX)                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_shifted_sums_##SUFFIX(const T* x, float* sums, float* squares, BN_SHAPE_PARAMS) {                          \
        bn_shifted_sums(x, sums, squares, BN_SHAPE);                                                                 \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_normalise_##SUFFIX(const T* x, const T* gamma, const T* beta, const float* sums, const float* squares,    \
                              T* y, T* mean, T* var, float* affine, BN_SHAPE_PARAMS, float eps, int relu) {          \
        bn_normalise(x, gamma, beta, sums, squares, y, mean, var, affine, BN_SHAPE, eps, relu);                      \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_eval_##SUFFIX(const T* x, const T* gamma, const T* beta, const T* mean, const T* var, T* y,               \
                         float* affine, int n, int c, int hw, float eps, int relu) {                                 \
        bn_eval(x, gamma, beta, mean, var, y, affine, n, c, hw, eps, relu);                                          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_backward_sums_##SUFFIX(const T* x, const T* mean, const T* var, const float* affine, const T* dy,         \
                                  float* dy_sums, float* dy_xhat_sums, BN_SHAPE_PARAMS, float eps, int relu) {       \
        bn_backward_sums(x, mean, var, affine, dy, dy_sums, dy_xhat_sums, BN_SHAPE, eps, relu);                      \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        bn_backward_dx_##SUFFIX(const T* x, const T* gamma, const T* mean, const T* var, const float* affine,        \
                                const T* dy, const float* dy_sums, const float* dy_xhat_sums, T* dx, T* dgamma,      \
                                T* dbeta, BN_SHAPE_PARAMS, float eps, int relu, int batch_stats) {                   \
        bn_backward_dx(x, gamma, mean, var, affine, dy, dy_sums, dy_xhat_sums, dx, dgamma, dbeta, BN_SHAPE, eps,     \
                       relu, batch_stats);                                                                           \
    }

BATCHNORM_ENTRY_POINTS(float, f32)
BATCHNORM_ENTRY_POINTS(bf16, bf16)
