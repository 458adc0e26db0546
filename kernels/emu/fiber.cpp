// Context switching for the emulator's fibers (see fiber.h).
#include "fiber.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)

// msclip_emu_switch(void** save_sp, void* load_sp): pushes the System V callee-saved registers
// and the MXCSR / x87 control words on the current stack, stores the stack pointer in *save_sp,
// then restores the same layout from load_sp and returns into the other context.
asm(R"(
    .text
    .p2align 4
    .globl msclip_emu_switch
    .type msclip_emu_switch, @function
msclip_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size msclip_emu_switch, .-msclip_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

extern "C" void msclip_emu_switch(void** save_sp, void* load_sp);

namespace emu {

void fiber_init(FiberContext* ctx, void* stack, size_t stack_bytes, void (*entry)()) {
    // Top of stack, 16-byte aligned. Below it: a null return address for `entry` (it never
    // returns), `entry` itself for the switch's `ret`, six zeroed registers and the control
    // words. At `entry`'s first instruction rsp = top - 8, the alignment a call leaves.
    auto top = (reinterpret_cast<uintptr_t>(stack) + stack_bytes) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;
    *--sp = reinterpret_cast<uint64_t>(entry);
    for (int i = 0; i < 6; ++i) *--sp = 0;
    uint32_t control[2] = {0, 0};
    asm volatile("stmxcsr %0" : "=m"(control[0]));
    asm volatile("fnstcw %0" : "=m"(control[1]));
    uint64_t words;
    std::memcpy(&words, control, sizeof words);
    *--sp = words;
    ctx->sp = sp;
}

void fiber_switch(FiberContext* from, FiberContext* to) { msclip_emu_switch(&from->sp, to->sp); }

}  // namespace emu

#else

namespace emu {

void fiber_init(FiberContext* ctx, void* stack, size_t stack_bytes, void (*entry)()) {
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = stack;
    ctx->uc.uc_stack.ss_size = stack_bytes;
    ctx->uc.uc_link = nullptr;
    makecontext(&ctx->uc, entry, 0);
}

void fiber_switch(FiberContext* from, FiberContext* to) { swapcontext(&from->uc, &to->uc); }

}  // namespace emu

#endif
