// Fused AdamW over all parameters of a model, with global-norm gradient clipping, in three
// launches per optimizer step and without the host reading anything back:
//   grad_sq_partials  the sum of squares of each chunk's gradient, one partial per chunk;
//   grad_norm_finish  the partials added in a fixed order (in double) into the global norm and
//                     the clipping factor, both left in device memory;
//   adamw_multi       every tensor's update, its gradients times that factor. A norm that is not
//                     finite (a NaN or infinite gradient anywhere) leaves a NaN factor, and then
//                     nothing is updated: the step is skipped, as PyTorch's GradScaler skips it.
//
// The host uploads a table with one slot per tensor, which all three kernels read, and a table
// of the step's constants (bias corrections and each tensor's decay and step size), which the
// host rewrites before each step: a captured graph of the step reads the new step's constants
// there without being captured again. The concatenation of all tensors is cut into chunks of
// ADAMW_CHUNK elements (chunked_slots.cuh). Each thread updates 4 consecutive elements per
// iteration with 128-bit loads and stores of the fp32 master, moments and gradient, and writes
// the bf16 copy of the new master in the same pass when the slot has one.
//
// The per-element arithmetic is that of the CPU reference (src/backend/cpu/adamw.rs) with the
// same f32 constants, in the same order of operations.
#include "chunked_slots.cuh"
#include "common.cuh"

constexpr int ADAMW_THREADS = 256;
constexpr int ADAMW_VEC = 4;
// Elements per block: each thread runs 4 iterations of 4 elements. src/backend/gpu/adamw.rs
// uses the same number to count chunks.
constexpr int ADAMW_CHUNK = ADAMW_THREADS * ADAMW_VEC * 4;

// One tensor of the update; src/backend/gpu/adamw.rs writes this layout as ten 64-bit words.
// All pointers come from separate allocations (256-byte aligned), so the vector accesses of a
// chunk, which starts at a multiple of ADAMW_CHUNK elements, are aligned.
struct AdamWSlot {
    float* param;
    const void* grad;  // float, or bf16 when grad_bf16
    float* m;
    float* v;
    bf16* copy;  // null when the tensor has no bf16 copy
    long long n;
    long long first_chunk;
    int row;  // the slot's constants: decay = constants[1 + 2 * row], step size = constants[2 + 2 * row]
    int unused;
    int grad_bf16;
    int clamped;  // whether the updated parameter is clamped to [lo, hi] (open_clip's logit scale)
    float lo, hi;
};

// What one block's update uses besides the slot: the step's constants and the slot's own.
struct AdamWShared {
    float beta1, beta2, eps, sqrt_bc2, grad_scale;
    float decay;      // 1 - lr * weight_decay
    float step_size;  // lr / (1 - beta1^t)
};

__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float g, const AdamWShared& h) {
    g = g * h.grad_scale;
    m = h.beta1 * m + (1.0f - h.beta1) * g;
    v = h.beta2 * v + (1.0f - h.beta2) * g * g;
    p = p * h.decay - h.step_size * m / (sqrtf(v) / h.sqrt_bc2 + h.eps);
}

__device__ __forceinline__ float clampf(float p, float lo, float hi) { return p < lo ? lo : (p > hi ? hi : p); }

__device__ __forceinline__ float bf16_half(uint32_t pair, int hi) {
    return bf16_to_float(bf16{static_cast<uint16_t>(pair >> (16 * hi))});
}

__device__ __forceinline__ float4 load_grad4(const AdamWSlot& s, long long i) {
    if (s.grad_bf16) {
        const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const bf16*>(s.grad) + i);
        return float4{bf16_half(raw.x, 0), bf16_half(raw.x, 1), bf16_half(raw.y, 0), bf16_half(raw.y, 1)};
    }
    return *reinterpret_cast<const float4*>(static_cast<const float*>(s.grad) + i);
}

__device__ __forceinline__ float load_grad(const AdamWSlot& s, long long i) {
    return s.grad_bf16 ? bf16_to_float(static_cast<const bf16*>(s.grad)[i]) : static_cast<const float*>(s.grad)[i];
}

// Elements i..i+3, all inside the tensor.
__device__ __forceinline__ void adamw_vector(const AdamWSlot& s, long long i, const AdamWShared& h) {
    float4 p = *reinterpret_cast<const float4*>(s.param + i);
    float4 m = *reinterpret_cast<const float4*>(s.m + i);
    float4 v = *reinterpret_cast<const float4*>(s.v + i);
    const float4 g = load_grad4(s, i);
    adamw_element(p.x, m.x, v.x, g.x, h);
    adamw_element(p.y, m.y, v.y, g.y, h);
    adamw_element(p.z, m.z, v.z, g.z, h);
    adamw_element(p.w, m.w, v.w, g.w, h);
    if (s.clamped) {
        p = float4{clampf(p.x, s.lo, s.hi), clampf(p.y, s.lo, s.hi), clampf(p.z, s.lo, s.hi), clampf(p.w, s.lo, s.hi)};
    }
    *reinterpret_cast<float4*>(s.param + i) = p;
    *reinterpret_cast<float4*>(s.m + i) = m;
    *reinterpret_cast<float4*>(s.v + i) = v;
    if (s.copy != nullptr) *reinterpret_cast<uint2*>(s.copy + i) = uint2{pack_bf16x2(p.x, p.y), pack_bf16x2(p.z, p.w)};
}

// Elements i..end-1 (fewer than 4): the ragged end of a tensor.
__device__ __forceinline__ void adamw_tail(const AdamWSlot& s, long long i, long long end, const AdamWShared& h) {
    for (; i < end; ++i) {
        float p = s.param[i], m = s.m[i], v = s.v[i];
        adamw_element(p, m, v, load_grad(s, i), h);
        s.param[i] = s.clamped ? clampf(p, s.lo, s.hi) : p;
        s.m[i] = m;
        s.v[i] = v;
        if (s.copy != nullptr) s.copy[i] = float_to_bf16(p);
    }
}

// Grid: one block per chunk (the sum over tensors of ceil(n / ADAMW_CHUNK)); `count` slots,
// every one with n > 0, in increasing first_chunk order. partials[chunk] = the sum of squares
// of the chunk's gradient elements, each thread over a fixed stride and block_sum in a fixed
// tree, so the norm is the same on every run.
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    grad_sq_partials(const AdamWSlot* slots, int count, float* partials) {
    const long long chunk = blockIdx.x;
    const AdamWSlot& s = slot_of_chunk(slots, count, chunk);
    long long start, end;
    chunk_range<ADAMW_CHUNK>(s, chunk, start, end);
    float acc = 0.0f;
    for (long long i = start + static_cast<long long>(threadIdx.x) * ADAMW_VEC; i < end;
         i += ADAMW_THREADS * ADAMW_VEC) {
        if (i + ADAMW_VEC <= end) {
            const float4 g = load_grad4(s, i);
            acc += g.x * g.x + g.y * g.y + g.z * g.z + g.w * g.w;
        } else {
            for (long long j = i; j < end; ++j) {
                const float g = load_grad(s, j);
                acc += g * g;
            }
        }
    }
    const float total = block_sum(acc);
    if (threadIdx.x == 0) partials[chunk] = total;
}

// One block of ADAMW_THREADS threads. norm = the global L2 norm of the gradients (the
// partials added in double, each thread over a fixed stride, then a fixed tree);
// scale = the factor every gradient is multiplied by: max_norm / norm when the norm exceeds
// max_norm > 0, else 1, and NaN when the norm is not finite (adamw_multi then skips the step).
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    grad_norm_finish(const float* partials, int chunks, float max_norm, float* norm_out, float* scale_out) {
    __shared__ double sums[ADAMW_THREADS];
    double acc = 0.0;
    for (int i = threadIdx.x; i < chunks; i += ADAMW_THREADS) acc += static_cast<double>(partials[i]);
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = ADAMW_THREADS / 2; stride > 0; stride /= 2) {
        if (static_cast<int>(threadIdx.x) < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double norm = sqrt(sums[0]);
        const bool finite = norm < static_cast<double>(INFINITY);  // false for NaN too
        double scale = 1.0;
        if (!finite) {
            scale = static_cast<double>(NAN);
        } else if (max_norm > 0.0f && norm > static_cast<double>(max_norm)) {
            scale = static_cast<double>(max_norm) / norm;
        }
        *norm_out = static_cast<float>(norm);
        *scale_out = static_cast<float>(scale);
    }
}

// Grid: as grad_sq_partials. *clip_scale is grad_norm_finish's factor. constants[0] is
// sqrt(1 - beta2^t); each slot's decay (1 - lr * weight_decay) and step size (lr / (1 - beta1^t))
// follow at its row.
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    adamw_multi(const AdamWSlot* slots, int count, float beta1, float beta2, float eps, const float* constants,
                const float* clip_scale) {
    const float grad_scale = *clip_scale;
    if (!(grad_scale < INFINITY)) return;  // a non-finite gradient norm: skip the step
    const long long chunk = blockIdx.x;
    const AdamWSlot s = slot_of_chunk(slots, count, chunk);
    const AdamWShared h{beta1, beta2, eps, constants[0], grad_scale, constants[1 + 2 * s.row], constants[2 + 2 * s.row]};
    long long start, end;
    chunk_range<ADAMW_CHUNK>(s, chunk, start, end);
    for (long long i = start + static_cast<long long>(threadIdx.x) * ADAMW_VEC; i < end;
         i += ADAMW_THREADS * ADAMW_VEC) {
        if (i + ADAMW_VEC <= end) {
            adamw_vector(s, i, h);
        } else {
            adamw_tail(s, i, end, h);
        }
    }
}
