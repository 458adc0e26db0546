// The sanitizer: what compute-sanitizer's memcheck, racecheck, synccheck and initcheck report,
// from every load and store of the instrumented kernels (tsan_abi.cpp feeds `on_access`). It
// runs on the one OS thread of an instrumented launch, so its state is that thread's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace emu::sanitizer {

// A kernel's access of `size` bytes at `address`, made by the instruction at `pc`.
void on_access(uintptr_t address, size_t size, bool write, bool atomic, uintptr_t pc);

// A finding that does not stop the kernel (a race, an unwritten read, a barrier problem);
// repeated findings of one kind at one pc are counted, not repeated.
void report(const char* kind, const std::string& what, uintptr_t pc);

// Launch bracket: `begin` clears the findings; `end` returns them as one message (empty when
// clean).
void begin_launch();
std::string end_launch();
// A new block starts on this thread (shared-memory shadow and proxy fences start over).
void begin_block(unsigned threads);

// Hopper's async proxy: the running thread's fence.proxy.async, and a wgmma's read of `bytes`
// bytes of shared memory at `address`, which must follow such a fence by every thread that wrote
// them (and a barrier: the read is race-checked as the issuing thread's).
void on_proxy_fence();
void on_async_read(uintptr_t address, size_t bytes, uintptr_t pc);

// "kernel K, block (x, y, z), thread (x, y, z)" for the running fiber.
std::string where();
// The instruction at `pc` as addr2line names it (function, and file:line when the binary keeps
// line tables), or the address in the executable.
std::string describe_pc(uintptr_t pc);

}  // namespace emu::sanitizer
