// The profiler's counting (profiler.h): warp requests with their sectors and shared-memory
// wavefronts, the unique bytes a launch touched, and tensor-core instructions.
#include "profiler.h"

#include <algorithm>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "memory_map.h"
#include "runtime.h"

namespace emu::profiler {

namespace {

struct LaneAccess {
    unsigned lane;
    uintptr_t address;
    unsigned size;
};

// One warp instruction's accesses, gathered lane by lane.
struct Request {
    bool shared;
    bool write;
    std::vector<LaneAccess> lanes;
};

// An instruction: the call site of the access hook and whether it stores. One call site can
// make a load and a store (a vector assignment, emu.h), which are two instructions on a GPU.
using Instruction = std::pair<uintptr_t, bool>;

struct InstructionHash {
    size_t operator()(const Instruction& i) const { return std::hash<uintptr_t>()(i.first * 2 + i.second); }
};

struct Warp {
    // (instruction, k): its k-th execution since the warp last synchronised.
    std::map<std::pair<Instruction, uint32_t>, Request> pending;
    // Per lane: how many times it executed each instruction since then.
    std::unordered_map<Instruction, uint32_t, InstructionHash> executions[32];
};

// Bytes of one allocation a launch read and wrote, one bit per byte.
struct Touched {
    size_t bytes;
    std::vector<uint64_t> read, written;
};

struct State {
    MsclipEmuCounters counters{};
    std::vector<Warp> warps;
    std::unordered_map<uintptr_t, Touched> touched;  // by allocation base
};

thread_local State t_state;

// Shared memory serves 32 banks of 4 bytes per wavefront; accesses wider than 4 bytes are split
// into phases of 128 bytes worth of lanes (16 lanes for 8 bytes, 8 for 16). A phase needs as
// many wavefronts as the most distinct words any one bank holds (lanes reading one word share it).
// Returns (wavefronts, phases with a lane in them: the wavefronts without bank conflicts).
std::pair<uint64_t, uint64_t> wavefronts(const std::vector<LaneAccess>& lanes) {
    const unsigned size = lanes.empty() ? 4 : std::max(4u, lanes.front().size);
    const unsigned lanes_per_phase = std::max(1u, 128 / size);
    uint64_t total = 0, phases = 0;
    for (unsigned phase = 0; phase < 32 / lanes_per_phase; ++phase) {
        std::unordered_set<uintptr_t> words[32];
        bool any = false;
        for (const LaneAccess& a : lanes) {
            if (a.lane / lanes_per_phase != phase) continue;
            any = true;
            for (uintptr_t w = a.address / 4; w <= (a.address + a.size - 1) / 4; ++w) words[w % 32].insert(w);
        }
        if (!any) continue;
        ++phases;
        size_t most = 1;
        for (const auto& bank : words) most = std::max(most, bank.size());
        total += most;
    }
    return {total, phases};
}

void count(const Request& r) {
    MsclipEmuCounters& c = t_state.counters;
    if (r.shared) {
        (r.write ? c.shared_store_requests : c.shared_load_requests) += 1;
        const auto [total, ideal] = wavefronts(r.lanes);
        (r.write ? c.shared_store_wavefronts : c.shared_load_wavefronts) += total;
        (r.write ? c.shared_store_ideal_wavefronts : c.shared_load_ideal_wavefronts) += ideal;
        return;
    }
    // Sector -> the bytes of it the lanes asked for; lanes asking for one byte share it (a
    // broadcast), so the bytes used never exceed the sectors' bytes.
    std::unordered_map<uintptr_t, uint32_t> sectors;
    for (const LaneAccess& a : r.lanes) {
        for (uintptr_t byte = a.address; byte < a.address + a.size; ++byte) sectors[byte / 32] |= 1u << (byte % 32);
    }
    uint64_t bytes = 0;
    for (const auto& [sector, used] : sectors) bytes += static_cast<uint64_t>(__builtin_popcount(used));
    (r.write ? c.global_store_requests : c.global_load_requests) += 1;
    (r.write ? c.global_store_sectors : c.global_load_sectors) += sectors.size();
    (r.write ? c.global_store_bytes : c.global_load_bytes) += bytes;
}

void close_warp(Warp& w) {
    for (const auto& [key, request] : w.pending) count(request);
    w.pending.clear();
    for (auto& e : w.executions) e.clear();
}

// A byte read after the launch wrote it is not counted as read: it comes back from the caches,
// never from DRAM (LayerNorm re-reads the residual sum it has just stored).
void mark(Touched& t, size_t offset, size_t size, bool write) {
    for (size_t i = offset; i < offset + size && i < t.bytes; ++i) {
        const uint64_t bit = uint64_t{1} << (i % 64);
        if (write) {
            t.written[i / 64] |= bit;
        } else if ((t.written[i / 64] & bit) == 0) {
            t.read[i / 64] |= bit;
        }
    }
}

// (bytes, 32-byte sectors) set in a bitmap.
std::pair<uint64_t, uint64_t> population(const std::vector<uint64_t>& bits) {
    uint64_t bytes = 0, sectors = 0;
    for (uint64_t word : bits) {
        bytes += static_cast<uint64_t>(__builtin_popcountll(word));
        for (int s = 0; s < 2; ++s) sectors += ((word >> (32 * s)) & 0xffffffffu) != 0 ? 1 : 0;
    }
    return {bytes, sectors};
}

}  // namespace

void on_access(uintptr_t address, size_t size, bool write, uintptr_t pc) {
    const uintptr_t smem = reinterpret_cast<uintptr_t>(dynamic_smem());
    bool shared = address >= smem && address < smem + dynamic_smem_bytes();
    if (!shared) find_static_shared(address, &shared);
    if (!shared) {
        Allocation* a = find_allocation(address);
        if (a == nullptr) return;  // the sanitizer reports such accesses; the profiler only counts
        auto it = t_state.touched.find(a->base);
        if (it == t_state.touched.end()) {
            const size_t words = (a->bytes + 63) / 64;
            it = t_state.touched.emplace(a->base, Touched{a->bytes, std::vector<uint64_t>(words), std::vector<uint64_t>(words)})
                     .first;
        }
        mark(it->second, address - a->base, size, write);
    }
    const unsigned thread = fiber_position().thread;
    Warp& w = t_state.warps[thread / 32];
    const Instruction instruction{pc, write};
    const uint32_t k = w.executions[thread % 32][instruction]++;
    Request& r = w.pending[{instruction, k}];
    r.shared = shared;
    r.write = write;
    r.lanes.push_back(LaneAccess{thread % 32, address, static_cast<unsigned>(size)});
}

void on_mma_sync() {
    if (fiber_position().thread % 32 != 0) return;
    ++t_state.counters.mma_sync_instructions;
    t_state.counters.tensor_flops += 2ull * 16 * 8 * 16;
}

void on_wgmma(int n) {
    ++t_state.counters.wgmma_instructions;
    t_state.counters.tensor_flops += 2ull * 64 * static_cast<uint64_t>(n) * 16;
}

void begin_launch() {
    t_state.counters = MsclipEmuCounters{};
    t_state.touched.clear();
}

void begin_block(unsigned threads) {
    close_requests(-1);  // the previous block's last requests
    t_state.warps.clear();
    t_state.warps.resize((threads + 31) / 32);
}

void close_requests(int warp) {
    if (warp >= 0) {
        close_warp(t_state.warps[static_cast<size_t>(warp)]);
        return;
    }
    for (Warp& w : t_state.warps) close_warp(w);
}

MsclipEmuCounters end_launch() {
    close_requests(-1);
    MsclipEmuCounters& c = t_state.counters;
    for (const auto& [base, t] : t_state.touched) {
        const auto [read_bytes, read_sectors] = population(t.read);
        const auto [written_bytes, written_sectors] = population(t.written);
        c.unique_bytes_read += read_bytes;
        c.unique_sectors_read += read_sectors;
        c.unique_bytes_written += written_bytes;
        c.unique_sectors_written += written_sectors;
    }
    t_state.touched.clear();
    return c;
}

}  // namespace emu::profiler
