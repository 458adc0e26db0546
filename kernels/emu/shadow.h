// Shadow memory for the sanitizer's race rules: per 4-byte word of device or shared memory, the
// last write and the last read, each with who made it and when (FiberPosition's terms). Words,
// not bytes, keep the shadow at 32 bytes per word; a byte mask per record keeps two threads that
// write different halves of one word (bf16 pairs) from looking like a race.
#pragma once

#include <cstdint>

#include "runtime.h"

namespace emu {

struct Access {
    uint32_t block_serial = 0;  // 0: no access recorded
    uint32_t epoch = 0;
    uint32_t warp_generation = 0;
    uint16_t thread = 0;
    uint8_t bytes = 0;  // bit i: byte i of the word
    uint8_t flags = 0;

    static constexpr uint8_t kAtomic = 1;
    // A read record that stands for two or more threads' concurrent reads.
    static constexpr uint8_t kSharedRead = 2;

    bool recorded() const { return block_serial != 0; }
    bool atomic() const { return (flags & kAtomic) != 0; }
};

struct Cell {
    Access write;
    Access read;
};

// Whether `earlier` happens before the running fiber's access at `now`: from an earlier launch,
// from an earlier barrier interval of this block, from this thread, or from a lane of this warp
// that has synchronised with it since (any warp-level sync this thread completed after the
// access counts: a partial mask that left the other lane out is not told apart). Blocks of one
// launch are never ordered.
inline bool ordered(const Access& earlier, const FiberPosition& now) {
    if (!earlier.recorded() || earlier.block_serial < now.first_block_serial) return true;
    if (earlier.block_serial != now.block_serial) return false;
    if (earlier.epoch != now.epoch) return true;
    if (earlier.thread == now.thread) return true;
    const bool same_warp = earlier.thread / 32 == now.thread / 32;
    return same_warp && now.synced_generation > earlier.warp_generation;
}

inline Access access_at(const FiberPosition& now, uint8_t bytes, bool atomic) {
    Access a;
    a.block_serial = now.block_serial;
    a.epoch = now.epoch;
    a.warp_generation = now.warp_generation;
    a.thread = static_cast<uint16_t>(now.thread);
    a.bytes = bytes;
    a.flags = atomic ? Access::kAtomic : 0;
    return a;
}

}  // namespace emu
