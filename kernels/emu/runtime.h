// What the runtime (runtime.cpp) shares with the other parts of the emulator; kernels never
// include this (they see emu.h only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

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

}  // namespace emu
