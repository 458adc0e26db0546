// The one header every kernel includes. On the device it defines the helpers with CUDA
// built-ins and inline PTX; with MSCLIP_EMU it pulls in the emulator's CUDA surface instead,
// and the helpers below run unchanged on the host. Kernels never include CUDA headers.
#pragma once

#ifdef MSCLIP_EMU
#include "emu/emu.h"
#else
#define MSCLIP_DYNAMIC_SMEM(type, name)                                  \
    extern __shared__ __align__(16) unsigned char msclip_dynamic_smem[]; \
    type* name = reinterpret_cast<type*>(msclip_dynamic_smem)
#include <stdint.h>
#include <string.h>
#endif

#define FULL_MASK 0xffffffffu

// ---- bf16: our own 16-bit type on both sides (no cuda_bf16.h), round to nearest even. ----

struct bf16 {
    uint16_t bits;
};

__device__ __forceinline__ float bf16_to_float(bf16 x) {
    const uint32_t wide = static_cast<uint32_t>(x.bits) << 16;
    float f;
    memcpy(&f, &wide, sizeof f);
    return f;
}

__device__ __forceinline__ bf16 float_to_bf16(float f) {
#ifdef MSCLIP_EMU
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fff};  // NaN, as cvt.rn.bf16.f32 writes it
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{static_cast<uint16_t>(u >> 16)};
#else
    uint16_t out;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(out) : "f"(f));
    return bf16{out};
#endif
}

// Element loads and stores that widen to / narrow from fp32, so kernels are written once
// over T in {float, bf16}.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return bf16_to_float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
    return float_to_bf16(x);
}

// Two bf16 in one 32-bit register, low half first: the operand format of mma.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return static_cast<uint32_t>(float_to_bf16(lo).bits) | (static_cast<uint32_t>(float_to_bf16(hi).bits) << 16);
}

// ---- Warp and block reductions. ----

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// Safe to call repeatedly: the trailing barrier protects the scratch before its next use.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / 32;
    float total = lane < warps ? partial[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

// ---- Tensor-core wrappers. Fragment layouts follow the PTX ISA ("Matrix Fragments for
// mma.m16n8k16", "ldmatrix"); the emulator reproduces them lane by lane. ----

#ifdef MSCLIP_EMU
namespace emu {
// D = A B + C for one warp, A 16x16 row-major, B 16x8 column-major, bf16 operands, fp32
// accumulation. Lane l (group g = l/4, t = l%4) holds A rows g and g+8, columns 2t..2t+1 and
// 2t+8..2t+9 (a[0]: row g, a[1]: row g+8, a[2]: row g cols +8, a[3]: row g+8 cols +8); B rows
// (k) 2t..2t+1 (b[0]) and 2t+8..2t+9 (b[1]) of column g; C/D rows g (c[0..1]) and g+8 (c[2..3]),
// columns 2t..2t+1.
inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    struct Fragments {
        uint32_t a[4];
        uint32_t b[2];
    };
    Fragments mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
    Fragments all[32];
    ::emu::warp_gather(FULL_MASK, &mine, all, sizeof(Fragments));
    ::emu::count_mma_sync();
    auto half = [](uint32_t pair, int hi) { return bf16_to_float(bf16{static_cast<uint16_t>(pair >> (16 * hi))}); };
    auto a_at = [&](int row, int col) {
        const int g = row % 8, t = (col % 8) / 2;
        const int reg = (row / 8) + 2 * (col / 8);
        return half(all[g * 4 + t].a[reg], col % 2);
    };
    auto b_at = [&](int k, int col) {
        const int t = (k % 8) / 2;
        return half(all[col * 4 + t].b[k / 8], k % 2);
    };
    const int lane = static_cast<int>(::emu::lane_id());
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2);
        const int col = 2 * t + (i % 2);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += a_at(row, k) * b_at(k, col);
        d[i] = acc;
    }
}

// ldmatrix .x4 (.trans): lanes 8j..8j+7 give the row addresses of 8x8 b16 matrix j; lane l
// receives in r[j] row l/4, columns 2(l%4)..+1 of matrix j (transposed: column l/4, rows
// 2(l%4)..+1).
inline void ldmatrix_x4(uint32_t r[4], const void* row_address, bool transpose) {
    const unsigned char* rows[32];
    const unsigned char* mine = static_cast<const unsigned char*>(row_address);
    ::emu::warp_gather(FULL_MASK, &mine, rows, sizeof mine);
    const int lane = static_cast<int>(::emu::lane_id());
    auto element = [&](int matrix, int row, int col) {
        uint16_t v;
        memcpy(&v, rows[matrix * 8 + row] + 2 * col, sizeof v);
        return static_cast<uint32_t>(v);
    };
    for (int j = 0; j < 4; ++j) {
        if (transpose) {
            r[j] = element(j, 2 * (lane % 4), lane / 4) | (element(j, 2 * (lane % 4) + 1, lane / 4) << 16);
        } else {
            r[j] = element(j, lane / 4, 2 * (lane % 4)) | (element(j, lane / 4, 2 * (lane % 4) + 1) << 16);
        }
    }
    ::emu::syncwarp(FULL_MASK);
}
}  // namespace emu
#endif

__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
#ifdef MSCLIP_EMU
    emu::mma_m16n8k16_bf16(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// `row_address` must point into shared memory and be 16-byte aligned.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row_address) {
#ifdef MSCLIP_EMU
    emu::ldmatrix_x4(r, row_address, false);
#else
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row_address));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row_address) {
#ifdef MSCLIP_EMU
    emu::ldmatrix_x4(r, row_address, true);
#else
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row_address));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
#endif
}
