// The sequence an attention block works on, shared by attention.cu (tensor cores, bf16) and
// attention_exact.cu (SIMT, f32).
//
// A call has `len` tokens per batch row of qkv [batch, len, 3*width]. Without offsets, sequence
// s is batch row s; with offsets (varlen packing, batch 1), sequence s is tokens offsets[s] ..
// offsets[s+1] - 1 of the one row, so sequences of different lengths share a launch. Grid x
// runs over (sequence, head); lse and delta are [batch, heads, len] either way. Within its
// sequence every mask leaves a query a prefix of visible keys: the causal mask cuts keys past
// the query, key padding (key_lengths, one per sequence) keys past the sequence's valid length.
// The causal mask applies to sequences `first_causal` onwards: 0 for causal text, the number of
// sequences for none, and in between when a modality-fused layer packs the image sequences (full
// attention) before the captions (causal) into one launch.
#pragma once

#include "common.cuh"

namespace attn {

struct Sequence {
    int len;        // tokens
    int key_len;    // keys any query may see (key padding), at most len
    bool causal;
    int head;
    size_t token0;  // its first token among all of qkv's batch * len tokens
    size_t stat0;   // index of (its head, its first token) in lse and delta

    // Keys 0 .. visible_keys(q) - 1 are visible to query q; none for a query past the end.
    // Nondecreasing in q, so the last query of a run of rows bounds the keys of the run.
    __device__ int visible_keys(int q) const {
        if (q >= len) return 0;
        const int limit = causal ? q + 1 : len;
        return limit < key_len ? limit : key_len;
    }
};

// The sequence and head of this block (grid x = sequence * heads + head). `offsets` and
// `key_lengths` may be null: one sequence per batch row, no key padding.
__device__ __forceinline__ Sequence sequence_of_block(int len, int heads, const int* offsets, const int* key_lengths,
                                                      int first_causal) {
    const int s = blockIdx.x / heads, h = blockIdx.x % heads;
    Sequence seq{len, len, s >= first_causal, h, static_cast<size_t>(s) * len, static_cast<size_t>(blockIdx.x) * len};
    if (offsets) {
        const int start = offsets[s];
        seq.len = offsets[s + 1] - start;
        seq.token0 = start;
        seq.stat0 = static_cast<size_t>(h) * len + start;
    }
    seq.key_len = key_lengths && key_lengths[s] < seq.len ? key_lengths[s] : seq.len;
    return seq;
}

}  // namespace attn
