// Multi-tensor kernels over a table of slots (adamw.cu, ema.cu): the concatenation of every
// tensor is cut into chunks of CHUNK elements that never straddle two tensors (a tensor's last
// chunk may be short), one block per chunk. Each slot holds its element count `n` and its
// `first_chunk` (a prefix sum of chunk counts), and block b finds its slot by binary search.
#pragma once

#include "common.cuh"

// The slot that owns chunk `chunk`: slots are in increasing first_chunk order.
template <typename Slot>
__device__ __forceinline__ const Slot& slot_of_chunk(const Slot* slots, int count, long long chunk) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (slots[mid].first_chunk <= chunk) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return slots[lo];
}

// The element range [start, end) of chunk `chunk` inside slot s.
template <long long CHUNK, typename Slot>
__device__ __forceinline__ void chunk_range(const Slot& s, long long chunk, long long& start, long long& end) {
    start = (chunk - s.first_chunk) * CHUNK;
    end = start + CHUNK < s.n ? start + CHUNK : s.n;
}
