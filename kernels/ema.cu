// The exponential moving average of a model's parameters in one launch: every target tensor
// moves toward its source, target += weight * (source - target), weight = 1 - decay. The EMA
// copy of a model (MoCo v3's momentum encoder; the optional targets of OneR's contrasts) follows
// the trained weights after every optimizer step this way, on the device, nothing read back.
//
// Slots and chunks as in chunked_slots.cuh; the host uploads the slot table once per call (a
// captured graph keeps it). fp32 throughout, one fused multiply-add per element, as the CPU
// reference (src/backend/cpu/ema.rs) computes it with mul_add: the two agree bit for bit.
#include "chunked_slots.cuh"
#include "common.cuh"

constexpr int EMA_THREADS = 256;
// Elements per block; src/backend/gpu/ema.rs counts chunks with the same number.
constexpr int EMA_CHUNK = 4096;

// One tensor; src/backend/gpu/ema.rs writes this layout as four 64-bit words.
struct EmaSlot {
    float* target;
    const float* source;
    long long n;
    long long first_chunk;
};

// Grid: one block per chunk; `count` slots, every one with n > 0, in increasing first_chunk
// order. Consecutive threads take consecutive elements: every access is coalesced.
extern "C" __global__ void __launch_bounds__(EMA_THREADS) ema_multi(const EmaSlot* slots, int count, float weight) {
    const long long chunk = blockIdx.x;
    const EmaSlot& s = slot_of_chunk(slots, count, chunk);
    long long start, end;
    chunk_range<EMA_CHUNK>(s, chunk, start, end);
    for (long long i = start + threadIdx.x; i < end; i += EMA_THREADS) {
        const float t = s.target[i];
        s.target[i] = fmaf(weight, s.source[i] - t, t);
    }
}
