// The CUDA surface the kernels use, for the host: the SIMT emulator (DESIGN 3.2).
//
// Kernels include only common.cuh, which includes this header when MSCLIP_EMU is defined.
// A `__global__` kernel becomes an ordinary host function that runs once per emulated thread;
// each thread of a block is a fiber on one OS thread, so `__syncthreads()` and the warp
// primitives are fiber barriers and `__shared__` variables are `static thread_local` (one copy
// per OS thread, shared by the fibers of the block running there). Blocks run in parallel on
// several OS threads, so atomics are real atomics.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>

#ifdef MSCLIP_SCAN_ENTRY_POINTS
// Only preprocessed (never compiled), so build.rs can list the kernels after macro expansion.
#define __global__ __msclip_global__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#ifdef MSCLIP_EMU_CHECKED
// The sanitizer's copy (build/kernels.rs): every `__shared__` variable gets a 64-byte redzone
// declared before it, which the sanitizer finds in the symbol table (static_shared.cpp) with the
// variables themselves, so a store just past an array lands in a redzone and is reported.
#define MSCLIP_EMU_CAT2(a, b) a##b
#define MSCLIP_EMU_CAT(a, b) MSCLIP_EMU_CAT2(a, b)
#define __shared__                                                                                       \
    static thread_local __attribute__((used, retain)) unsigned char MSCLIP_EMU_CAT(msclip_redzone_, \
                                                                                   __COUNTER__)[64];  \
    static thread_local
#else
#define __shared__ static thread_local
#endif
#define MSCLIP_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::emu::dynamic_smem())

namespace emu {
// A vector assignment of the instrumented copy (tsan_abi.cpp): one load of the right-hand side
// and one store, each of the vector's width, as the GPU makes them, where the compiler would
// split the assignment into scalar accesses (or, for the load, none it reports).
void vector_store(void* dst, const void* src, size_t bytes);
}  // namespace emu

#ifdef MSCLIP_EMU_CHECKED
#define MSCLIP_EMU_VECTOR_STORE(T)                                 \
    T() = default;                                                 \
    T(const T&) = default;                                         \
    inline __attribute__((always_inline)) T& operator=(const T& o) { \
        ::emu::vector_store(this, &o, sizeof(T));                  \
        return *this;                                              \
    }
#else
#define MSCLIP_EMU_VECTOR_STORE(T)
#endif

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct alignas(8) float2 {
    float x, y;
    MSCLIP_EMU_VECTOR_STORE(float2)
};
struct alignas(16) float4 {
    float x, y, z, w;
    MSCLIP_EMU_VECTOR_STORE(float4)
};
struct alignas(8) uint2 {
    unsigned int x, y;
    MSCLIP_EMU_VECTOR_STORE(uint2)
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
    MSCLIP_EMU_VECTOR_STORE(uint4)
};

namespace emu {

// Position of the running fiber; defined in runtime.cpp.
// By value: a kernel reading `threadIdx.x` must not touch the runtime's memory, which the
// sanitizer would see as an access outside every allocation.
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
unsigned char* dynamic_smem();

// Fiber barriers. `syncthreads` waits for every live thread of the block; `syncwarp` for the
// lanes of `mask` in the caller's warp.
void syncthreads();
void syncwarp(unsigned mask);
// Each lane of `mask` deposits `bytes` bytes (at most 32), then, after a warp barrier, reads
// lane `src`'s deposit; a second barrier keeps the slots stable until every lane has read.
void warp_exchange(unsigned mask, const void* mine, void* theirs, int src_lane, size_t bytes);
unsigned warp_ballot(unsigned mask, bool predicate);
unsigned lane_id();
unsigned active_mask();

// The whole warp's deposits, for collective ops (mma, ldmatrix): lane i's `bytes` bytes land
// at `all + i * bytes` for every lane of `mask`.
void warp_gather(unsigned mask, const void* mine, void* all, size_t bytes);

// Warpgroup MMA (kernels/wgmma.cuh), in wgmma.cpp. `shared_address` is an offset into the
// block's dynamic shared memory; an issued product runs when `wgmma_wait` completes its group.
uint32_t shared_address(const void* p);
void wgmma_issue(float* d, int n, uint64_t a_desc, uint64_t b_desc);
void wgmma_commit();
void wgmma_wait(int pending);
// wgmma.fence (orders the thread's register accesses before its next products) and
// fence.proxy.async (makes its ordinary shared-memory stores visible to the tensor cores): both
// checked, since leaving either out computes right here and wrong on the GPU.
void wgmma_fence();
void fence_proxy_async();
// A warp's mma.sync, for the profiler's tensor-core count.
void count_mma_sync();

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
static constexpr int warpSize = 32;

// Always inlined, here and below, so the barrier's return address (which the sanitizer compares
// across threads) is the kernel's call site, and so the sanitizer's copy instruments the accesses
// of atomics in the kernel's own translation unit. The empty asm after the call keeps it from
// becoming a tail call where a barrier is a kernel's last statement on some path: the return
// address would then be the kernel's caller, and threads at one barrier would look divergent.
#define MSCLIP_EMU_INLINE inline __attribute__((always_inline))
MSCLIP_EMU_INLINE void __syncthreads() {
    ::emu::syncthreads();
    asm volatile("" ::: "memory");
}
MSCLIP_EMU_INLINE void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::syncwarp(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline unsigned __activemask() { return ::emu::active_mask(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    static_assert(sizeof(T) <= 32, "shuffle of a type wider than 32 bytes");
    const int lane = static_cast<int>(::emu::lane_id());
    const int segment = lane & ~(width - 1);
    T out;
    ::emu::warp_exchange(mask, &v, &out, segment + (src & (width - 1)), sizeof(T));
    return out;
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = static_cast<int>(::emu::lane_id());
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    T out;
    ::emu::warp_exchange(mask, &v, &out, src, sizeof(T));
    return out;
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = static_cast<int>(::emu::lane_id());
    int src = lane + static_cast<int>(delta);
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    T out;
    ::emu::warp_exchange(mask, &v, &out, src, sizeof(T));
    return out;
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = static_cast<int>(::emu::lane_id());
    int src = lane - static_cast<int>(delta);
    if (src < (lane & ~(width - 1))) src = lane;
    T out;
    ::emu::warp_exchange(mask, &v, &out, src, sizeof(T));
    return out;
}

inline unsigned __ballot_sync(unsigned mask, int predicate) { return ::emu::warp_ballot(mask, predicate != 0); }
inline int __any_sync(unsigned mask, int predicate) { return ::emu::warp_ballot(mask, predicate != 0) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
    return ::emu::warp_ballot(mask, predicate != 0) == (mask & ::emu::active_mask());
}

// Atomics: blocks run on several OS threads at once.
template <typename T>
MSCLIP_EMU_INLINE T emu_atomic_cas_loop_add(T* address, T value) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic width");
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits* bits = reinterpret_cast<Bits*>(address);
    Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        T old;
        std::memcpy(&old, &expected, sizeof(T));
        const T sum = old + value;
        Bits desired;
        std::memcpy(&desired, &sum, sizeof(T));
        if (__atomic_compare_exchange_n(bits, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            return old;
        }
    }
}
MSCLIP_EMU_INLINE float atomicAdd(float* address, float value) { return emu_atomic_cas_loop_add(address, value); }
MSCLIP_EMU_INLINE double atomicAdd(double* address, double value) { return emu_atomic_cas_loop_add(address, value); }
MSCLIP_EMU_INLINE int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST); }
MSCLIP_EMU_INLINE unsigned atomicAdd(unsigned* address, unsigned value) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
MSCLIP_EMU_INLINE int atomicMax(int* address, int value) {
    int old = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (old < value &&
           !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
MSCLIP_EMU_INLINE int atomicExch(int* address, int value) { return __atomic_exchange_n(address, value, __ATOMIC_SEQ_CST); }
MSCLIP_EMU_INLINE int atomicCAS(int* address, int compare, int value) {
    __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
MSCLIP_EMU_INLINE unsigned atomicCAS(unsigned* address, unsigned compare, unsigned value) {
    __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}

// Device intrinsics with host meanings. The fast-math forms are computed exactly here; their
// device error (a few ulp) is inside every tolerance the kernel tests use.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
// CUDA's min/max overloads for built-in types.
using std::max;
using std::min;
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// The kernel table each emulated module exports; see registry.h.
namespace emu {
using Trampoline = void (*)(void** args);
struct KernelEntry {
    const char* name;
    Trampoline run;
    int n_args;
    const size_t* arg_sizes;
};

template <typename F, F f>
struct Trampolines;

template <typename... A, void (*f)(A...)>
struct Trampolines<void (*)(A...), f> {
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};
    __attribute__((no_sanitize_thread)) static void run(void** args) {
        run_with(args, std::index_sequence_for<A...>{});
    }
    // Reads the launch's argument buffers (host memory): not the kernel's accesses.
    template <size_t... I>
    __attribute__((no_sanitize_thread)) static void run_with(void** args, std::index_sequence<I...>) {
        f(*static_cast<std::remove_reference_t<A>*>(args[I])...);
    }
    static KernelEntry entry(const char* name) {
        return KernelEntry{name, &run, static_cast<int>(sizeof...(A)), sizes};
    }
};
}  // namespace emu

#define MSCLIP_EMU_ENTRY(kernel, name) ::emu::Trampolines<decltype(&kernel), &kernel>::entry(name)
