// The entry points GCC's -fsanitize=thread instrumentation calls (the libtsan interface), served
// by the emulator instead of libtsan, as the Linux kernel's KCSAN serves them: only the
// instrumented copy of the kernels calls these (build/kernels.rs), and they hand each access to
// the sanitizer or the profiler while an instrumented launch runs. The caller's return address
// names the instruction.
#include <cstddef>
#include <cstdint>

#include "profiler.h"
#include "runtime.h"
#include "sanitizer.h"

namespace {

// Every access goes through here; `pc` is the instrumented instruction's return address.
inline void access(const volatile void* address, size_t size, bool write, bool atomic, bool aligned, void* pc) {
    const emu::LaunchOptions* launch = emu::t_instrumented;
    if (launch == nullptr) return;
    const uintptr_t at = reinterpret_cast<uintptr_t>(address);
    if (at >= emu::t_stacks_begin && at < emu::t_stacks_end) return;  // the fiber's locals
    const uintptr_t from = reinterpret_cast<uintptr_t>(pc);
    if (launch->profiled) {
        emu::profiler::on_access(at, size, write, from);
        return;
    }
    if (aligned && size > 1 && at % size != 0) {
        emu::sanitizer::report("misaligned access",
                               "a " + std::to_string(size) + "-byte access at an address that is not a multiple of " +
                                   std::to_string(size) + " (the hardware faults on it)",
                               from);
    }
    emu::sanitizer::on_access(at, size, write, atomic, from);
}

enum MemoryOrder { relaxed, consume, acquire, release, acq_rel, seq_cst };

}  // namespace

#define RET __builtin_return_address(0)

void emu::vector_store(void* dst, const void* src, size_t bytes) {
    // `src` is the right-hand side: a vector in memory (a copy between arrays of vectors) or
    // a temporary on the fiber's stack, which `access` ignores.
    access(src, bytes, false, false, true, RET);
    access(dst, bytes, true, false, true, RET);
    __builtin_memcpy(dst, src, bytes);
}

extern "C" {

void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}

void __tsan_read1(void* a) { access(a, 1, false, false, true, RET); }
void __tsan_read2(void* a) { access(a, 2, false, false, true, RET); }
void __tsan_read4(void* a) { access(a, 4, false, false, true, RET); }
void __tsan_read8(void* a) { access(a, 8, false, false, true, RET); }
void __tsan_read16(void* a) { access(a, 16, false, false, true, RET); }
void __tsan_write1(void* a) { access(a, 1, true, false, true, RET); }
void __tsan_write2(void* a) { access(a, 2, true, false, true, RET); }
void __tsan_write4(void* a) { access(a, 4, true, false, true, RET); }
void __tsan_write8(void* a) { access(a, 8, true, false, true, RET); }
void __tsan_write16(void* a) { access(a, 16, true, false, true, RET); }
void __tsan_unaligned_read2(const void* a) { access(a, 2, false, false, false, RET); }
void __tsan_unaligned_read4(const void* a) { access(a, 4, false, false, false, RET); }
void __tsan_unaligned_read8(const void* a) { access(a, 8, false, false, false, RET); }
void __tsan_unaligned_read16(const void* a) { access(a, 16, false, false, false, RET); }
void __tsan_unaligned_write2(void* a) { access(a, 2, true, false, false, RET); }
void __tsan_unaligned_write4(void* a) { access(a, 4, true, false, false, RET); }
void __tsan_unaligned_write8(void* a) { access(a, 8, true, false, false, RET); }
void __tsan_unaligned_write16(void* a) { access(a, 16, true, false, false, RET); }
void __tsan_read_range(void* a, unsigned long size) { access(a, size, false, false, false, RET); }
void __tsan_write_range(void* a, unsigned long size) { access(a, size, true, false, false, RET); }
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}

}  // extern "C"

// The atomics GCC lowers __atomic builtins to under the instrumentation: each is the access
// (marked atomic, so concurrent atomics are not races) and then the operation itself.
#define MSCLIP_TSAN_RMW(bits, T, op)                                                \
    extern "C" T __tsan_atomic##bits##_##op(volatile T* a, T v, int) {              \
        access(a, sizeof(T), true, true, true, RET);                                \
        return __atomic_##op(a, v, __ATOMIC_SEQ_CST);                               \
    }
#define MSCLIP_TSAN_CAS(bits, T, kind, weak)                                                                   \
    extern "C" int __tsan_atomic##bits##_compare_exchange_##kind(volatile T* a, T* expected, T v, int, int) { \
        access(a, sizeof(T), true, true, true, RET);                                                          \
        return __atomic_compare_exchange_n(a, expected, v, weak, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    }
#define MSCLIP_TSAN_ATOMICS(bits, T)                                                                     \
    extern "C" T __tsan_atomic##bits##_load(const volatile T* a, int) {                                \
        access(a, sizeof(T), false, true, true, RET);                                                   \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                   \
    extern "C" void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                              \
        access(a, sizeof(T), true, true, true, RET);                                                    \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                       \
    }                                                                                                   \
    extern "C" T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                              \
        access(a, sizeof(T), true, true, true, RET);                                                    \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                             \
    }                                                                                                   \
    MSCLIP_TSAN_RMW(bits, T, fetch_add)                                                                 \
    MSCLIP_TSAN_RMW(bits, T, fetch_sub)                                                                 \
    MSCLIP_TSAN_RMW(bits, T, fetch_and)                                                                 \
    MSCLIP_TSAN_RMW(bits, T, fetch_or)                                                                  \
    MSCLIP_TSAN_RMW(bits, T, fetch_xor)                                                                 \
    MSCLIP_TSAN_CAS(bits, T, strong, false)                                                             \
    MSCLIP_TSAN_CAS(bits, T, weak, true)                                                                \
    extern "C" T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T expected, T v, int, int) { \
        access(a, sizeof(T), true, true, true, RET);                                                    \
        __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);        \
        return expected;                                                                                \
    }

MSCLIP_TSAN_ATOMICS(8, uint8_t)
MSCLIP_TSAN_ATOMICS(16, uint16_t)
MSCLIP_TSAN_ATOMICS(32, uint32_t)
MSCLIP_TSAN_ATOMICS(64, uint64_t)
