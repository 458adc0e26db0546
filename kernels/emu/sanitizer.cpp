// The sanitizer's checks on each access (sanitizer.h): which memory an address is in, bounds,
// alignment, unwritten reads, races, and Hopper's async-proxy fences; and its reports.
#include "sanitizer.h"

#include <link.h>
#include <unistd.h>

#include <climits>

#include <cstdio>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

#include "memory_map.h"
#include "runtime.h"

namespace emu::sanitizer {

namespace {

// Distinct findings kept per launch; more are counted.
constexpr size_t kMaxFindings = 12;

// The shadow of one shared-memory region (the dynamic window or one static variable) for the
// running block: race cells, which words this block wrote (the block's serial) and each word's
// writer's count of proxy fences at the write.
struct SharedShadow {
    std::vector<Cell> cells;
    std::vector<uint32_t> written_block;
    std::vector<uint32_t> fences_at_write;

    explicit SharedShadow(size_t bytes)
        : cells((bytes + 3) / 4), written_block((bytes + 3) / 4), fences_at_write((bytes + 3) / 4) {}
};

struct State {
    std::vector<std::string> findings;
    std::map<std::pair<std::string, uintptr_t>, size_t> seen;
    size_t suppressed = 0;
    std::unordered_map<uintptr_t, SharedShadow> shared;  // by region base
    std::vector<uint32_t> proxy_fences;                  // per thread of the running block
    Allocation* last_allocation = nullptr;
    std::pair<uintptr_t, SharedShadow*> last_shared{0, nullptr};
};

thread_local State t_state;

// The memory an access falls in, once classified.
struct Region {
    enum Kind { global, shared } kind;
    uintptr_t base;
    size_t bytes;
    Allocation* allocation;           // global memory
    const StaticShared* variable;     // static shared memory (null: the dynamic window)
};

// For reports only: the strings are built when something is found, never per access.
std::string region_name(const Region& r) {
    if (r.allocation != nullptr) return "allocation #" + std::to_string(r.allocation->id);
    if (r.variable != nullptr) return "__shared__ " + r.variable->name;
    return "dynamic shared memory";
}

std::string hex(uintptr_t v) {
    char text[24];
    std::snprintf(text, sizeof text, "0x%zx", static_cast<size_t>(v));
    return text;
}

std::string access_words(size_t size, bool write, bool atomic) {
    return std::string(atomic ? "atomic " : "") + (write ? "write" : "read") + " of " + std::to_string(size) +
           (size == 1 ? " byte" : " bytes");
}

[[noreturn]] void fault(const char* kind, const std::string& what, uintptr_t pc) {
    report(kind, what, pc);
    trap(end_launch());
}

// Classifies `address` (never the fiber's stack: the hooks filter local memory out); traps on an
// address no kernel may touch.
Region classify(uintptr_t address, size_t size, bool write, bool atomic, uintptr_t pc) {
    // The last allocation hit (live for the whole launch, which holds the memory map still):
    // most accesses of a kernel go to a few buffers.
    Allocation*& last = t_state.last_allocation;
    if (last != nullptr && address >= last->base && address + size <= last->base + last->bytes) {
        return Region{Region::global, last->base, last->bytes, last, nullptr};
    }
    const uintptr_t smem = reinterpret_cast<uintptr_t>(dynamic_smem());
    const size_t smem_bytes = dynamic_smem_bytes();
    auto access = [&] { return access_words(size, write, atomic); };
    if (address >= smem && address < smem + smem_bytes) {
        if (address + size > smem + smem_bytes) {
            fault("out of bounds", access() + " at dynamic shared memory +" + std::to_string(address - smem) +
                                       " runs past its " + std::to_string(smem_bytes) + " bytes as launched",
                  pc);
        }
        return Region{Region::shared, smem, smem_bytes, nullptr, nullptr};
    }
    bool in_span = false;
    if (const StaticShared* var = find_static_shared(address, &in_span)) {
        if (var->redzone) {
            fault("out of bounds", access() + " in the redzone beside a static __shared__ variable (" +
                                       std::to_string(address - var->base) + " bytes into " + var->name + ")",
                  pc);
        }
        if (address + size > var->base + var->bytes) {
            fault("out of bounds", access() + " at +" + std::to_string(address - var->base) +
                                       " of static __shared__ " + var->name + " (" + std::to_string(var->bytes) +
                                       " bytes) runs past its end",
                  pc);
        }
        return Region{Region::shared, var->base, var->bytes, nullptr, var};
    }
    if (in_span) fault("out of bounds", access() + " between static __shared__ variables at " + hex(address), pc);
    if (Allocation* a = find_allocation(address)) {
        if (address + size > a->base + a->bytes) {
            fault("out of bounds", access() + " at +" + std::to_string(address - a->base) + " of allocation #" +
                                       std::to_string(a->id) + " (" + std::to_string(a->bytes) +
                                       " bytes) runs past its end",
                  pc);
        }
        last = a;
        return Region{Region::global, a->base, a->bytes, a, nullptr};
    }
    fault("out of bounds", access() + " at " + hex(address) + ", outside every allocation: " + describe_nearest(address),
          pc);
}

SharedShadow& shared_shadow(const Region& r) {
    auto& [base, shadow] = t_state.last_shared;
    if (shadow != nullptr && base == r.base) return *shadow;
    auto it = t_state.shared.find(r.base);
    if (it == t_state.shared.end()) it = t_state.shared.emplace(r.base, SharedShadow(r.bytes)).first;
    base = r.base;
    shadow = &it->second;
    return *shadow;
}

// Calls f(word index, byte mask within the word) for each word [address, address + size) covers.
template <typename F>
void for_each_word(uintptr_t offset, size_t size, F f) {
    for (uintptr_t byte = offset; byte < offset + size;) {
        const uintptr_t word = byte / 4;
        const uintptr_t end = std::min<uintptr_t>(offset + size, (word + 1) * 4);
        uint8_t mask = 0;
        for (uintptr_t b = byte; b < end; ++b) mask |= static_cast<uint8_t>(1u << (b % 4));
        f(static_cast<size_t>(word), mask);
        byte = end;
    }
}

std::string who(const Access& a, const FiberPosition& now) {
    const dim3 dim = block_dim();
    const unsigned t = a.thread;
    std::string thread = "thread (" + std::to_string(t % dim.x) + ", " + std::to_string(t / dim.x % dim.y) + ", " +
                         std::to_string(t / (dim.x * dim.y)) + ")";
    if (a.block_serial != now.block_serial) return thread + " of another block of this launch";
    return thread + " in the same barrier interval";
}

void check_race(Cell& cell, const Access& mine, const FiberPosition& now, const Region& r, uintptr_t address,
                uintptr_t pc, bool write) {
    auto place = [&] { return region_name(r) + " +" + std::to_string(address - r.base); };
    // Each block has shared memory of its own: another block's records are of other memory.
    auto stale = [&](const Access& other) { return r.kind == Region::shared && other.block_serial != now.block_serial; };
    auto concurrent = [&](const Access& other) { return other.recorded() && !stale(other) && !ordered(other, now); };
    auto conflicts = [&](const Access& other) {
        return concurrent(other) && (other.bytes & mine.bytes) != 0 && !(other.atomic() && mine.atomic());
    };
    if (conflicts(cell.write)) {
        report(write ? "race (write after write)" : "race (read after write)",
               std::string(write ? "writes " : "reads ") + place() + ", written by " + who(cell.write, now), pc);
    }
    if (write && conflicts(cell.read) &&
        (cell.read.thread != mine.thread || (cell.read.flags & Access::kSharedRead) != 0 ||
         cell.read.block_serial != mine.block_serial)) {
        report("race (write after read)", "writes " + place() + ", read by " + who(cell.read, now), pc);
    }
    if (write) {
        cell.write = mine;
    } else {
        Access read = mine;
        const Access& old = cell.read;
        if (concurrent(old)) {
            read.bytes |= old.bytes;
            if (old.thread != mine.thread || (old.flags & Access::kSharedRead)) read.flags |= Access::kSharedRead;
        }
        cell.read = read;
    }
}

// Reads of shared memory no thread wrote are not findings (as for compute-sanitizer's initcheck,
// which covers device memory only): kernels read junk columns they then discard. The all-ones
// poison each block starts with makes such a value show up in results if it is ever used.
void check_shared(const Region& r, uintptr_t address, size_t size, bool write, bool atomic, uintptr_t pc,
                  const FiberPosition& now) {
    SharedShadow& s = shared_shadow(r);
    for_each_word(address - r.base, size, [&](size_t w, uint8_t mask) {
        if (write) {
            s.written_block[w] = now.block_serial;
            s.fences_at_write[w] = t_state.proxy_fences[now.thread];
        }
        check_race(s.cells[w], access_at(now, mask, atomic), now, r, r.base + 4 * w, pc, write);
    });
}

void check_global(const Region& r, uintptr_t address, size_t size, bool write, bool atomic, uintptr_t pc,
                  const FiberPosition& now) {
    Allocation& a = *r.allocation;
    if (!write && !a.is_written(address, size)) {
        report("unwritten read",
               "reads " + std::to_string(size) + " bytes of " + region_name(r) + " +" +
                   std::to_string(address - r.base) + " that nothing wrote since it was allocated",
               pc);
    }
    if (write || atomic) a.mark_written(address, size);
    Cell* cells = a.cells_for_race_checks();
    for_each_word(address - r.base, size, [&](size_t w, uint8_t mask) {
        check_race(cells[w], access_at(now, mask, atomic), now, r, r.base + 4 * w, pc, write);
    });
}

}  // namespace

void on_access(uintptr_t address, size_t size, bool write, bool atomic, uintptr_t pc) {
    const Region region = classify(address, size, write, atomic, pc);
    const FiberPosition now = fiber_position();
    if (region.kind == Region::shared) {
        check_shared(region, address, size, write, atomic, pc, now);
    } else {
        check_global(region, address, size, write, atomic, pc, now);
    }
}

void report(const char* kind, const std::string& what, uintptr_t pc) {
    State& s = t_state;
    auto key = std::make_pair(std::string(kind), pc);
    auto it = s.seen.find(key);
    if (it != s.seen.end()) {
        ++it->second;
        return;
    }
    if (s.findings.size() >= kMaxFindings) {
        ++s.suppressed;
        return;
    }
    s.seen.emplace(key, 1);
    s.findings.push_back(std::string(kind) + ": " + where() + " " + what + "; at " + describe_pc(pc));
}

void begin_launch() {
    t_state.last_allocation = nullptr;
    // Dynamic shared memory may move and change size between launches.
    t_state.shared.clear();
    t_state.last_shared = {0, nullptr};
    t_state.findings.clear();
    t_state.seen.clear();
    t_state.suppressed = 0;
}

std::string end_launch() {
    State& s = t_state;
    std::string all;
    for (size_t i = 0; i < s.findings.size(); ++i) {
        all += (i == 0 ? "sanitizer: " : "\n  ") + s.findings[i];
    }
    if (s.suppressed > 0) all += "\n  (" + std::to_string(s.suppressed) + " more findings of other kinds or places)";
    s.findings.clear();
    s.seen.clear();
    s.suppressed = 0;
    return all;
}

void begin_block(unsigned threads) { t_state.proxy_fences.assign(threads, 0); }

void on_proxy_fence() { ++t_state.proxy_fences[fiber_position().thread]; }

void on_async_read(uintptr_t address, size_t bytes, uintptr_t pc) {
    const Region region = classify(address, bytes, false, false, pc);
    const FiberPosition now = fiber_position();
    if (region.kind != Region::shared) return;
    SharedShadow& s = shared_shadow(region);
    for_each_word(address - region.base, bytes, [&](size_t w, uint8_t) {
        const Access& writer = s.cells[w].write;
        if (writer.block_serial != now.block_serial || s.written_block[w] != now.block_serial) return;
        if (t_state.proxy_fences[writer.thread] <= s.fences_at_write[w]) {
            report("missing fence.proxy.async",
                   "a wgmma reads " + region_name(region) + " +" + std::to_string(4 * w) + ", written by thread " +
                       std::to_string(writer.thread) +
                       " with ordinary stores and no fence.proxy.async after them (the tensor cores read shared "
                       "memory through the async proxy)",
                   pc);
        }
    });
    check_shared(region, address, bytes, false, false, pc, now);
}

std::string where() {
    const uint3 b = block_idx(), t = thread_idx();
    return std::string("kernel ") + kernel_name() + ", block (" + std::to_string(b.x) + ", " + std::to_string(b.y) +
           ", " + std::to_string(b.z) + "), thread (" + std::to_string(t.x) + ", " + std::to_string(t.y) + ", " +
           std::to_string(t.z) + "):";
}

std::string describe_pc(uintptr_t pc) {
    // The main program's load bias (PIE): addr2line wants addresses as the file has them.
    uintptr_t bias = 0;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) {
            *static_cast<uintptr_t*>(out) = info->dlpi_addr;
            return 1;  // the first object is the executable
        },
        &bias);
    // The return address of the hook's call: step back into the instruction that made it.
    const uintptr_t at = pc - bias - 1;
    // This process's executable (in the shell popen starts, /proc/self is the shell).
    char command[PATH_MAX + 96];
    std::snprintf(command, sizeof command, "addr2line -C -f -i -e /proc/%d/exe 0x%zx 2>/dev/null",
                  static_cast<int>(getpid()), static_cast<size_t>(at));
    std::string lines;
    if (FILE* pipe = popen(command, "r")) {
        char buffer[512];
        while (std::fgets(buffer, sizeof buffer, pipe) != nullptr) lines += buffer;
        pclose(pipe);
    }
    // Pairs of lines: function, then file:line ("??:0" without line tables).
    std::string text;
    size_t start = 0;
    int pair = 0;
    while (start < lines.size()) {
        size_t end = lines.find('\n', start);
        if (end == std::string::npos) end = lines.size();
        std::string line = lines.substr(start, end - start);
        start = end + 1;
        if (pair % 2 == 0) {
            text += (pair == 0 ? "" : " inlined into ") + without_copy_names(line);
        } else if (line.rfind("??", 0) != 0) {
            text += " (" + line + ")";
        }
        ++pair;
    }
    return text.empty() ? "exe+" + hex(at) : text;
}

}  // namespace emu::sanitizer
