// Fibers for the SIMT emulator: one per emulated thread, switched cooperatively on one OS
// thread. On x86-64 the switch is hand-rolled (callee-saved registers, the stack pointer and the
// floating-point control words), which avoids the signal-mask system call inside swapcontext;
// elsewhere ucontext stands in.
#pragma once

#include <cstddef>

namespace emu {

struct FiberContext;

// Creates a context that runs `entry()` on `stack` (of `stack_bytes`) when first switched to.
// `entry` must never return: it switches away for the last time instead.
void fiber_init(FiberContext* ctx, void* stack, size_t stack_bytes, void (*entry)());
// Saves the running context into `from` and resumes `to`.
void fiber_switch(FiberContext* from, FiberContext* to);

}  // namespace emu

#if defined(__x86_64__)
namespace emu {
struct FiberContext {
    void* sp = nullptr;
};
}  // namespace emu
#else
#include <ucontext.h>
namespace emu {
struct FiberContext {
    ucontext_t uc;
};
}  // namespace emu
#endif
