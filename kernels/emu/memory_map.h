// What the sanitizer knows of memory: the driver's live allocations (the Rust side reports each
// allocation, free and host write through the msclip_emu_note_* functions), the last frees (to
// name a use after free), which bytes of an allocation hold written data, and the instrumented
// kernels' static __shared__ variables with their redzones, found in the executable's symbol
// table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "shadow.h"

namespace emu {

struct Allocation {
    uintptr_t base = 0;
    size_t bytes = 0;
    uint64_t id = 0;  // in allocation order, for reports
    // One bit per byte, set once written (by the host or a kernel); empty when the allocation
    // was made outside the sanitizer, whose writes are not seen (all of it counts as written).
    std::vector<uint64_t> written;
    // Race shadow, one cell per word, made on the first instrumented access.
    std::unique_ptr<Cell[]> cells;

    bool is_written(uintptr_t address, size_t len) const;
    void mark_written(uintptr_t address, size_t len);
    Cell* cells_for_race_checks();
};

struct FreedRange {
    uintptr_t base;
    size_t bytes;
    uint64_t id;
};

// One static __shared__ variable of the instrumented copy (or a redzone) in this OS thread.
struct StaticShared {
    uintptr_t base;
    size_t bytes;
    bool redzone;
    std::string name;  // demangled, without the copy's namespace
};

// Every instrumented launch holds this lock for its whole run, so the Rust side's notes from
// other threads wait instead of changing the map under it.
std::mutex& memory_map_mutex();
// The live allocation holding `address`, if any (the caller holds the lock).
Allocation* find_allocation(uintptr_t address);
// A symbol's name without what marks the instrumented copy (its namespaces and entry-point
// suffix), as the kernel's source spells it.
std::string without_copy_names(std::string name);
// The allocation or recent free nearest to `address`, described for a report.
std::string describe_nearest(uintptr_t address);

// This OS thread's static __shared__ variables, sorted by address (read from the symbol table
// once per process; the addresses are this thread's TLS copies).
const std::vector<StaticShared>& static_shared_variables();
// The variable (or redzone) holding `address`, or null; `span` is the lowest and highest address
// of them all, so anything between is a gap between variables.
const StaticShared* find_static_shared(uintptr_t address, bool* inside_span);

}  // namespace emu
