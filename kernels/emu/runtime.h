// What the runtime (runtime.cpp) shares with the other parts of the emulator; kernels never
// include this (they see emu.h only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "emu.h"

namespace emu {

// A wgmma product issued by one thread and not yet run (wgmma.cpp).
struct WgmmaProduct {
    float* d;
    int n;
    uint64_t a, b;
};

// A thread's issued products, where each committed group ends in `issued`, and how many products
// it has issued in all (its position in its warpgroup's log).
struct WgmmaQueue {
    std::vector<WgmmaProduct> issued;
    std::vector<size_t> group_ends;
    size_t issued_total = 0;
    // A wgmma.fence since the thread began or last completed products (which it then reads).
    bool fenced = false;
};

// The operands of the i-th product a warpgroup issued, as its first thread to get there gave them:
// every thread of the warpgroup must issue the same shape and descriptors.
struct WgmmaIssue {
    int n;
    uint64_t a, b;
};

// The running thread's queue; the runtime reports a thread that ends with products in it.
WgmmaQueue& wgmma_queue();
// The running thread's warpgroup's log of issued products (reset for every block).
std::vector<WgmmaIssue>& warpgroup_log();
// Index of the running thread in its block (x fastest).
unsigned thread_linear();
size_t dynamic_smem_bytes();
// Records `message` as the launch's error (the first one wins); the thread goes on.
void fail(const char* message);

// ---- What the sanitizer (sanitizer.cpp) and the profiler see of the running fiber. ----

// How a launch runs: the plain copy of the kernels, or the instrumented copy under the sanitizer
// (one OS thread, blocks in order) with the fibers of a block resumed in a given order between
// barriers; the profiler counts the instrumented copy's accesses instead of checking them.
enum class Schedule { forward = 0, reverse = 1, shuffled = 2 };
struct LaunchOptions {
    bool checked = false;
    bool profiled = false;
    Schedule schedule = Schedule::forward;
    uint64_t seed = 0;
};

// Where the running fiber is, in the terms the race rules use. Block serials and barrier epochs
// count up across every instrumented launch of the process, so a record from an earlier block or
// interval compares as ordered without clearing any shadow memory.
struct FiberPosition {
    uint3 block;
    unsigned thread;               // linear index in the block
    uint32_t block_serial;         // this block's run
    uint32_t first_block_serial;   // the launch's first block: older records are ordered
    uint32_t epoch;                // barrier interval of the block
    uint32_t warp_generation;      // completed warp-level syncs of the thread's warp
    uint32_t synced_generation;    // warp_generation after the thread's own last warp sync
};

// Non-null while an instrumented launch runs a fiber on this OS thread, and the span of this OS
// thread's fiber stacks (local memory, never checked): the access hooks (tsan_abi.cpp) test them
// before anything else, on every load and store.
extern thread_local const LaunchOptions* t_instrumented;
extern thread_local uintptr_t t_stacks_begin;
extern thread_local uintptr_t t_stacks_end;
FiberPosition fiber_position();
const char* kernel_name();
// Ends the launch at a fault the hardware would trap on (the access must not happen): records
// `report` and switches to the scheduler for good; the launch returns it as its error.
[[noreturn]] void trap(const std::string& report);

}  // namespace emu
