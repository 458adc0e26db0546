// infonce.cu's tile variants: the block geometry of its kernels and, per variant, how operand
// tiles are laid out in shared memory and multiplied (CUDA cores, mma.sync or wgmma). For
// infonce.cu only (internal linkage, like the rest of its helpers).
#pragma once

#include "tile.cuh"
#include "wgmma.cuh"

namespace {

using namespace tile;

// Full unrolling where nvcc's heuristics stop short and a register array would go to local
// memory (the emulator's host compiler needs no hint).
#ifdef MSCLIP_EMU
#define UNROLL
#else
#define UNROLL _Pragma("unroll")
#endif

constexpr int K_CHUNK = 64;          // feature columns per staged chunk
constexpr int BWD_THREADS = 256;     // 8 warps: 4 row groups x 2 halves of the other rows
constexpr int GROUP_CHUNKS = 8;      // feature chunks whose d own a backward block accumulates
constexpr int HALF_COLS = ROWS / 2;  // other rows of z, and feature columns of a chunk, per backward warp
constexpr int STAGE_STRIDE = f32_stride(K_CHUNK);

// How a kernel variant stages and multiplies its operand tiles (64 rows x one feature chunk):
// - SimtF32: f32 features, row-major padded tiles, fp32 FMAs on the CUDA cores;
// - MmaBf16: bf16 features, row-major padded tiles, mma.sync (HMMA) per warp;
// - WgmmaBf16: bf16 features, core-matrix tiles, wgmma (HGMMA) per warpgroup (Hopper only).
// `product` adds own rows own_row..+15 times other rows other_row..+8*N8 (transposed) over the
// chunk to a warp's fragment; the wgmma form multiplies the warpgroup's 64 own rows at once, its
// warps' own_row being 16 * (warp % 4) as every caller has it. `dz_product` is the backward's
// second product: acc[c] (the warp's 16 own rows x 32 feature columns other_row.. of the group's
// chunk c) += dz (the 64 x 64 tile, DzLayout) times the other rows' chunk c (slot c). wgmma needs
// that operand feature-major, so its variant also stages a transposed copy of each slot
// (SLOT_COPIES). Every region of a kernel's shared memory is a padded tile's size (Pad), which the
// core-matrix tiles fit in.

// What the two variants on row-major padded tiles share: every tile in the one layout, products
// that complete before they return, nothing to do after staging.
template <typename Element, int STRIDE>
struct PaddedTiles {
    using T = Element;
    using Layout = PaddedRows<STRIDE>;
    using Pad = Layout;
    using DzLayout = Layout;
    static constexpr bool PIPELINED = false;
    static constexpr int SLOT_COPIES = 1;
    __device__ static void staged() {}
};

struct SimtF32 : PaddedTiles<float, f32_stride(K_CHUNK)> {
    __device__ static void dz_product(float acc[GROUP_CHUNKS][4][4], const float* dz_tile, const float* slots,
                                      const float*, int own_row, int other_row, int group) {
        const Lane l = lane_position();
        const float* other = slots + Layout::offset(0, other_row);
        for (int k = 0; k < K_CHUNK; ++k) {
            const float p0 = dz_tile[Layout::offset(own_row + l.g, k)];
            const float p1 = dz_tile[Layout::offset(own_row + l.g + 8, k)];
            for (int c = 0; c < GROUP_CHUNKS; ++c) {
                if (c >= group) continue;
                for (int j = 0; j < 4; ++j) {
                    const float2 b = *reinterpret_cast<const float2*>(other + c * Layout::ELEMENTS +
                                                                      Layout::offset(k, 8 * j + 2 * l.t));
                    acc[c][j][0] = fmaf(p0, b.x, acc[c][j][0]);
                    acc[c][j][1] = fmaf(p0, b.y, acc[c][j][1]);
                    acc[c][j][2] = fmaf(p1, b.x, acc[c][j][2]);
                    acc[c][j][3] = fmaf(p1, b.y, acc[c][j][3]);
                }
            }
        }
    }

    template <int N8>
    __device__ static void product(float acc[N8][4], const float* own_tile, const float* other_tile, int own_row,
                                   int other_row) {
        const Lane p = lane_position();
        const float* own = own_tile + Layout::offset(own_row, 0);
        const float* other = other_tile + Layout::offset(other_row, 0);
        for (int k = 0; k < K_CHUNK; k += 4) {
            const float4 a[2] = {*reinterpret_cast<const float4*>(own + Layout::offset(p.g, k)),
                                 *reinterpret_cast<const float4*>(own + Layout::offset(p.g + 8, k))};
            for (int j = 0; j < N8; ++j) {
                for (int e = 0; e < 2; ++e) {
                    const float4 b = *reinterpret_cast<const float4*>(other + Layout::offset(8 * j + 2 * p.t + e, k));
                    for (int half = 0; half < 2; ++half) {
                        float& c = acc[j][2 * half + e];
                        c = fmaf(a[half].x, b.x, c);
                        c = fmaf(a[half].y, b.y, c);
                        c = fmaf(a[half].z, b.z, c);
                        c = fmaf(a[half].w, b.w, c);
                    }
                }
            }
        }
    }
};

struct MmaBf16 : PaddedTiles<bf16, bf16_stride(K_CHUNK)> {
    __device__ static void dz_product(float acc[GROUP_CHUNKS][4][4], const bf16* dz_tile, const bf16* slots,
                                      const bf16*, int own_row, int other_row, int group) {
        const int lane = threadIdx.x % 32;
        uint32_t fa[4][4];
        for (int ks = 0; ks < 4; ++ks) {
            ldmatrix_x4(fa[ks], dz_tile + Layout::offset(own_row + lane % 16, 16 * ks + 8 * (lane / 16)));
        }
        UNROLL
        for (int c = 0; c < GROUP_CHUNKS; ++c) {
            if (c < group) {
                mma_a_fragments_in<4, Layout>(acc[c], fa, slots + c * Layout::ELEMENTS + Layout::offset(0, other_row));
            }
        }
    }

    template <int N8>
    __device__ static void product(float acc[N8][4], const bf16* own_tile, const bf16* other_tile, int own_row,
                                   int other_row) {
        constexpr int STRIDE = bf16_stride(K_CHUNK);
        mma_rows<K_CHUNK / 16, N8, STRIDE>(acc, own_tile + own_row * STRIDE, other_tile + other_row * STRIDE);
    }
};

struct WgmmaBf16 {
    using T = bf16;
    using Layout = CoreMatrices<K_CHUNK>;
    using Pad = PaddedRows<bf16_stride(K_CHUNK)>;
    using DzLayout = Layout;
    // The forward stages the next chunk while the tensor cores multiply this one.
    static constexpr bool PIPELINED = true;
    static constexpr int SLOT_COPIES = 2;
    // The tiles were written by ordinary stores; wgmma reads them through the async proxy.
    __device__ static void staged() { wgmma::fence_operands(); }

    __device__ static uint64_t descriptor(const bf16* at) {
        return wgmma::kmajor_descriptor(at, Layout::K_CORE_BYTES, Layout::ROW_GROUP_BYTES);
    }

    // Starts acc += own other^T over the chunk as one group; acc is the tensor cores' until complete.
    template <int N8>
    __device__ static void issue(float acc[N8][4], const bf16* own_tile, const bf16* other_tile, int other_row) {
        float* d = &acc[0][0];
        wgmma::pin<4 * N8>(d);
        wgmma::fence();
        for (int ks = 0; ks < K_CHUNK / 16; ++ks) {
            wgmma::mma_bf16<8 * N8>(d, descriptor(own_tile + Layout::offset(0, 16 * ks)),
                                    descriptor(other_tile + Layout::offset(other_row, 16 * ks)));
        }
        wgmma::commit_group();
    }

    template <int N8>
    __device__ static void complete(float acc[N8][4]) {
        wgmma::wait_group<0>();
        wgmma::pin<4 * N8>(&acc[0][0]);
    }

    template <int N8>
    __device__ static void product(float acc[N8][4], const bf16* own_tile, const bf16* other_tile, int,
                                   int other_row) {
        issue<N8>(acc, own_tile, other_tile, other_row);
        complete<N8>(acc);
    }

    // The warpgroup's 64 own rows x the 32 features other_row.. of every chunk of the group, one
    // m64n32 accumulator per chunk, all in one wgmma group: A the dz tile, B the transposed slot.
    // GROUP is a constant so that no branch separates the products (ptxas would serialise them).
    template <int GROUP>
    __device__ static void dz_products(float acc[GROUP_CHUNKS][4][4], const bf16* dz_tile, const bf16* transposed,
                                       int other_row) {
        UNROLL
        for (int c = 0; c < GROUP; ++c) wgmma::pin<16>(&acc[c][0][0]);
        wgmma::fence();
        UNROLL
        for (int c = 0; c < GROUP; ++c) {
            const bf16* slot = transposed + c * Pad::ELEMENTS;
            UNROLL
            for (int ks = 0; ks < K_CHUNK / 16; ++ks) {
                wgmma::mma_bf16<32>(&acc[c][0][0], descriptor(dz_tile + Layout::offset(0, 16 * ks)),
                                    descriptor(slot + Layout::offset(other_row, 16 * ks)));
            }
        }
        wgmma::commit_group();
        wgmma::wait_group<0>();
        UNROLL
        for (int c = 0; c < GROUP; ++c) wgmma::pin<16>(&acc[c][0][0]);
    }

    __device__ static void dz_product(float acc[GROUP_CHUNKS][4][4], const bf16* dz_tile, const bf16*,
                                      const bf16* transposed, int, int other_row, int group) {
        static_assert(GROUP_CHUNKS == 8, "one case per group size");
        switch (group) {
            case 1: return dz_products<1>(acc, dz_tile, transposed, other_row);
            case 2: return dz_products<2>(acc, dz_tile, transposed, other_row);
            case 3: return dz_products<3>(acc, dz_tile, transposed, other_row);
            case 4: return dz_products<4>(acc, dz_tile, transposed, other_row);
            case 5: return dz_products<5>(acc, dz_tile, transposed, other_row);
            case 6: return dz_products<6>(acc, dz_tile, transposed, other_row);
            case 7: return dz_products<7>(acc, dz_tile, transposed, other_row);
            default: return dz_products<8>(acc, dz_tile, transposed, other_row);
        }
    }
};

}  // namespace
