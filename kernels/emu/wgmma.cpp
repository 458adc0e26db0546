// The emulator's wgmma (kernels/wgmma.cuh): warpgroup products on descriptors of the block's
// dynamic shared memory. Each thread computes its own accumulator elements from shared memory, so
// no lane exchange is needed; a product runs only when wgmma_wait lets its group complete, the
// latest moment the hardware may read its operands and write its results.
#include <cstdio>
#include <string>

#include "../common.cuh"  // bf16 and its widening, as the kernels see them (pulls in emu.h)
#include "profiler.h"
#include "runtime.h"
#include "sanitizer.h"

namespace emu {

namespace {

// The fields of a shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format").
struct Descriptor {
    uint32_t start, k_core_bytes, row_group_bytes, base_offset, swizzle;

    static Descriptor decode(uint64_t bits) {
        auto field = [&](int shift) { return static_cast<uint32_t>((bits >> shift) & 0x3fffu) << 4; };
        return Descriptor{field(0), field(16), field(32), static_cast<uint32_t>((bits >> 49) & 7u),
                          static_cast<uint32_t>(bits >> 62)};
    }

    // Byte offset of element (row, k) of a K-major, unswizzled operand of 16-bit elements: core
    // matrices of 8 rows x 8 elements (16 bytes a row, 128 contiguous bytes).
    uint32_t offset(int row, int k) const {
        return start + (row / 8) * row_group_bytes + (row % 8) * 16 + (k / 8) * k_core_bytes + (k % 8) * 2;
    }
};

bool check_supported(const Descriptor& d, const char* operand) {
    if (d.swizzle == 0 && d.base_offset == 0) return true;
    char message[160];
    std::snprintf(message, sizeof message,
                  "wgmma operand %s: swizzle mode %u, base offset %u; the emulator models the unswizzled K-major "
                  "layout only",
                  operand, d.swizzle, d.base_offset);
    fail(message);
    return false;
}

// A bf16 operand element at a byte offset, widened as the kernels widen it.
float bf16_at(const unsigned char* smem, uint32_t offset) {
    bf16 x;
    std::memcpy(&x.bits, smem + offset, sizeof x.bits);
    return bf16_to_float(x);
}

// One m64nNk16 product for the calling thread's accumulator elements.
void run(const WgmmaProduct& p) {
    const Descriptor a = Descriptor::decode(p.a), b = Descriptor::decode(p.b);
    if (!check_supported(a, "A") || !check_supported(b, "B")) return;
    const unsigned char* smem = dynamic_smem();
    const size_t bytes = dynamic_smem_bytes();
    // The highest offsets either operand touches (row 63 / N-1, k 15), against the allocation.
    if (a.offset(63, 15) + 2 > bytes || b.offset(p.n - 1, 15) + 2 > bytes) {
        char message[160];
        std::snprintf(message, sizeof message,
                      "wgmma reads past the %zu bytes of dynamic shared memory (A ends at %u, B at %u)", bytes,
                      a.offset(63, 15) + 2, b.offset(p.n - 1, 15) + 2);
        fail(message);
        return;
    }
    const unsigned linear = thread_linear();
    const int warp_rank = static_cast<int>(linear / 32) % 4, lane = static_cast<int>(linear % 32);
    const int g = lane / 4, t = lane % 4;
    for (int j = 0; j < p.n / 8; ++j) {
        for (int i = 0; i < 4; ++i) {
            const int row = 16 * warp_rank + g + 8 * (i / 2), col = 8 * j + 2 * t + i % 2;
            float acc = p.d[4 * j + i];
            for (int k = 0; k < 16; ++k) acc += bf16_at(smem, a.offset(row, k)) * bf16_at(smem, b.offset(col, k));
            p.d[4 * j + i] = acc;
        }
    }
}

// The sanitizer's view of a product's operand reads: each 16-byte row of a core matrix, through
// the async proxy.
void check_operand_reads(int n, uint64_t a_bits, uint64_t b_bits, uintptr_t pc) {
    const Descriptor a = Descriptor::decode(a_bits), b = Descriptor::decode(b_bits);
    const uintptr_t smem = reinterpret_cast<uintptr_t>(dynamic_smem());
    for (int k = 0; k < 16; k += 8) {
        for (int row = 0; row < 64; ++row) sanitizer::on_async_read(smem + a.offset(row, k), 16, pc);
        for (int row = 0; row < n; ++row) sanitizer::on_async_read(smem + b.offset(row, k), 16, pc);
    }
}

}  // namespace

void wgmma_fence() { wgmma_queue().fenced = true; }

void fence_proxy_async() {
    if (const LaunchOptions* launch = t_instrumented; launch != nullptr && !launch->profiled) {
        sanitizer::on_proxy_fence();
    }
}

void count_mma_sync() {
    if (const LaunchOptions* launch = t_instrumented; launch != nullptr && launch->profiled) {
        profiler::on_mma_sync();
    }
}

uint32_t shared_address(const void* p) {
    const unsigned char* base = dynamic_smem();
    const unsigned char* at = static_cast<const unsigned char*>(p);
    if (at < base || at >= base + dynamic_smem_bytes()) {
        fail("a wgmma operand outside the block's dynamic shared memory (the emulator keeps static __shared__ "
             "arrays elsewhere: stage wgmma tiles in MSCLIP_DYNAMIC_SMEM)");
        return 0;
    }
    return static_cast<uint32_t>(at - base);
}

void wgmma_issue(float* d, int n, uint64_t a_desc, uint64_t b_desc) {
    const dim3 dim = block_dim();
    if ((dim.x * dim.y * dim.z) % 128 != 0) {
        fail("wgmma issued by a block that is not made of whole warpgroups (a multiple of 128 threads)");
        return;
    }
    WgmmaQueue& q = wgmma_queue();
    if (!q.fenced) {
        fail("wgmma issued without a wgmma.fence since the thread began or last waited for products: the "
             "accumulators its ordinary code wrote or read are not ordered before the product");
        return;
    }
    std::vector<WgmmaIssue>& log = warpgroup_log();
    const size_t index = q.issued_total++;
    if (index == log.size()) {
        log.push_back(WgmmaIssue{n, a_desc, b_desc});
        // The warpgroup's first thread to issue stands for the product's read of its operands.
        if (const LaunchOptions* launch = t_instrumented) {
            if (launch->profiled) {
                profiler::on_wgmma(n);
            } else {
                check_operand_reads(n, a_desc, b_desc, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
            }
        }
    } else if (log[index].n != n || log[index].a != a_desc || log[index].b != b_desc) {
        fail("the threads of a warpgroup issued different wgmma operands (shape or descriptors); the hardware "
             "takes them from the warpgroup as a whole");
        return;
    }
    q.issued.push_back(WgmmaProduct{d, n, a_desc, b_desc});
}

void wgmma_commit() {
    WgmmaQueue& q = wgmma_queue();
    q.group_ends.push_back(q.issued.size());
}

void wgmma_wait(int pending) {
    WgmmaQueue& q = wgmma_queue();
    const int complete = static_cast<int>(q.group_ends.size()) - pending;
    if (complete <= 0) return;
    const size_t end = q.group_ends[complete - 1];
    for (size_t i = 0; i < end; ++i) run(q.issued[i]);
    q.fenced = false;
    q.issued.erase(q.issued.begin(), q.issued.begin() + static_cast<std::ptrdiff_t>(end));
    q.group_ends.erase(q.group_ends.begin(), q.group_ends.begin() + complete);
    for (size_t& e : q.group_ends) e -= end;
}

}  // namespace emu
