// The sequence an attention block works on, shared by attention.cu (tensor cores, bf16) and
// attention_exact.cu (SIMT, f32).
//
// A call has `len` tokens per batch row of qkv [batch, len, 3*width]. Without offsets, sequence
// s is batch row s; with offsets (varlen packing, batch 1), sequence s is tokens offsets[s] ..
// offsets[s+1] - 1 of the one row, so sequences of different lengths share a launch. Grid x
// runs over (sequence, head); lse and delta are [batch, heads, len] either way.
//
// Within its sequence every mask leaves a query one contiguous range of visible keys
// (`KeyRange`). Segments come first: every sequence's first `segment_boundary` tokens are
// segment 0 (OneR's image tokens), the rest segment 1 (its caption), and bit 2 * query segment +
// key segment of `segment_visibility` says whether a query sees that segment's keys (0xF: all;
// 0x9: each segment itself; 0x6: each the other), which leaves both segments, one, or none.
// Then the causal mask cuts keys past the query and key padding (key_lengths, one per sequence)
// keys past the sequence's valid length. The causal mask applies to sequences `first_causal`
// onwards: 0 for causal text, the number of sequences for none, and in between when a
// modality-fused layer packs the image sequences (full attention) before the captions (causal)
// into one launch.
#pragma once

#include "common.cuh"

namespace attn {

// Keys begin .. end - 1; empty when end <= begin.
struct KeyRange {
    int begin, end;

    __device__ bool empty() const { return end <= begin; }
    __device__ bool has(int key) const { return key >= begin && key < end; }
    // Whether any of keys first .. first + count - 1 is in the range.
    __device__ bool meets(int first, int count) const { return !empty() && first < end && first + count > begin; }
    // The smallest range holding both.
    __device__ KeyRange hull(const KeyRange& o) const {
        if (empty()) return o;
        if (o.empty()) return *this;
        return KeyRange{begin < o.begin ? begin : o.begin, end > o.end ? end : o.end};
    }
};

struct Sequence {
    int len;        // tokens
    int key_len;    // keys any query may see (key padding), at most len
    bool causal;
    int boundary;   // the first token of segment 1, at most len
    int visibility; // bit 2 * query segment + key segment: that segment's keys are visible
    int head;
    size_t token0;  // its first token among all of qkv's batch * len tokens
    size_t stat0;   // index of (its head, its first token) in lse and delta

    // The keys query q sees; none for a query past the end.
    __device__ KeyRange keys_of(int q) const {
        if (q >= len) return KeyRange{0, 0};
        const int bits = visibility >> (q < boundary ? 0 : 2);
        KeyRange r = (bits & 3) == 3 ? KeyRange{0, len}
                     : (bits & 1)    ? KeyRange{0, boundary}
                     : (bits & 2)    ? KeyRange{boundary, len}
                                     : KeyRange{0, 0};
        if (causal && r.end > q + 1) r.end = q + 1;
        if (r.end > key_len) r.end = key_len;
        return r;
    }

    // The hull of the keys queries first .. first + count - 1 see (none past the end). Within a
    // segment every query's range starts at the same key and a later query's never ends earlier,
    // so the last query of each segment's part of the run bounds that part.
    __device__ KeyRange keys_of_rows(int first, int count) const {
        const int last = (first + count < len ? first + count : len) - 1;
        if (first > last) return KeyRange{0, 0};
        KeyRange r = KeyRange{0, 0};
        if (first < boundary) r = keys_of(boundary - 1 < last ? boundary - 1 : last);
        if (last >= boundary) r = r.hull(keys_of(last));
        return r;
    }
};

// The sequence and head of this block (grid x = sequence * heads + head). `offsets` and
// `key_lengths` may be null: one sequence per batch row, no key padding.
__device__ __forceinline__ Sequence sequence_of_block(int len, int heads, const int* offsets, const int* key_lengths,
                                                      int first_causal, int segment_boundary,
                                                      int segment_visibility) {
    const int s = blockIdx.x / heads, h = blockIdx.x % heads;
    Sequence seq{len,
                 len,
                 s >= first_causal,
                 0,
                 segment_visibility,
                 h,
                 static_cast<size_t>(s) * len,
                 static_cast<size_t>(blockIdx.x) * len};
    if (offsets) {
        const int start = offsets[s];
        seq.len = offsets[s + 1] - start;
        seq.token0 = start;
        seq.stat0 = static_cast<size_t>(h) * len + start;
    }
    seq.key_len = key_lengths && key_lengths[s] < seq.len ? key_lengths[s] : seq.len;
    seq.boundary = segment_boundary < seq.len ? segment_boundary : seq.len;
    return seq;
}

}  // namespace attn

// The mask parameters of every attention entry point, after `len, heads`, and the block's
// sequence made from them (with `len` and `heads` in scope).
#define ATTENTION_MASK_PARAMS \
    const int *offsets, const int *key_lengths, int first_causal, int segment_boundary, int segment_visibility
#define ATTENTION_SEQUENCE \
    attn::sequence_of_block(len, heads, offsets, key_lengths, first_causal, segment_boundary, segment_visibility)
