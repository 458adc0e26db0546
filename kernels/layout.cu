// Data movement: block copies (slice, pad_slice, concat), permutes, row gathers (embedding
// lookup), repeats, and the deterministic scatter-add of embedding gradients.
//
// Pure moves do no arithmetic, so they are written over an access unit U instead of the
// element type: uint4 (16 bytes, suffix _b16), uint32_t (_b4) or uint16_t (_b2). The host picks
// the widest unit that divides every width, stride and offset of the launch, so rows of 8 bf16
// move as one 128-bit access and odd widths fall back to element-sized ones.
#include "vector_io.cuh"

// dst[r * dst_stride + j] = src[r * src_stride + j] for r < rows, j < width (in units).
template <typename U>
__device__ void copy_block(const U* __restrict__ src, int src_stride, U* __restrict__ dst, int dst_stride, int rows,
                           int width) {
    const unsigned total = static_cast<unsigned>(rows) * width;
    for (unsigned t = grid_thread(); t < total; t += grid_threads()) {
        const unsigned r = t / width, j = t % width;
        dst[static_cast<size_t>(r) * dst_stride + j] = src[static_cast<size_t>(r) * src_stride + j];
    }
}

// dst[o, i, :] = src[o, :] for i < n: [outer, width] repeated into [outer, n, width].
template <typename U>
__device__ void repeat_middle(const U* __restrict__ src, U* __restrict__ dst, int n, int total_rows, int width) {
    const unsigned total = static_cast<unsigned>(total_rows) * width;
    for (unsigned t = grid_thread(); t < total; t += grid_threads()) {
        const unsigned row = t / width, j = t % width;
        dst[t] = src[static_cast<size_t>(row / n) * width + j];
    }
}

// out[i] = src[offset(i)] where i is decomposed over the output dims and each output dim
// steps the input by its stride. `table` holds dims[0..rank] then strides[0..rank]; the host
// has merged dims that stay adjacent, so rank is small and the innermost stride is often 1.
template <typename U>
__device__ void permute(const U* __restrict__ src, U* __restrict__ dst, int n, int rank, const int* __restrict__ table) {
    for (unsigned t = grid_thread(); t < static_cast<unsigned>(n); t += grid_threads()) {
        unsigned rem = t;
        size_t offset = 0;
        for (int d = rank - 1; d >= 0; --d) {
            const unsigned dim = static_cast<unsigned>(__ldg(table + d));
            offset += static_cast<size_t>(rem % dim) * __ldg(table + rank + d);
            rem /= dim;
        }
        dst[t] = src[offset];
    }
}

// A batched transpose, the permute that swaps the two innermost dims ([b, rows, cols] ->
// [b, cols, rows]: NCHW feature maps to tokens and back). The gather above reads such an input
// one element per lane a row apart (5.4 sectors per 4-byte request, 12-21% sector efficiency
// in `msclip profile kernels`); here a block moves a 32 x 32 tile through shared memory, reading
// rows and writing rows. The tile's pitch of 33 units puts the 32 elements of a tile column in
// 32 different banks for 2- and 4-byte units. Block (32, 8); grid (column tiles, row tiles, b).
constexpr int kTransposeTile = 32;
constexpr int kTransposeRowsPerPass = 8;

template <typename U>
__device__ void transpose(const U* __restrict__ src, U* __restrict__ dst, int rows, int cols) {
    __shared__ U tile[kTransposeTile][kTransposeTile + 1];
    const size_t plane = static_cast<size_t>(rows) * cols;
    src += blockIdx.z * plane;
    dst += blockIdx.z * plane;
    const int first_row = blockIdx.y * kTransposeTile, first_col = blockIdx.x * kTransposeTile;
    for (int i = threadIdx.y; i < kTransposeTile; i += kTransposeRowsPerPass) {
        const int r = first_row + i, c = first_col + threadIdx.x;
        if (r < rows && c < cols) tile[i][threadIdx.x] = src[static_cast<size_t>(r) * cols + c];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < kTransposeTile; i += kTransposeRowsPerPass) {
        const int c = first_col + i, r = first_row + threadIdx.x;
        if (c < cols && r < rows) dst[static_cast<size_t>(c) * rows + r] = tile[threadIdx.x][i];
    }
}

// out[j, :] = table[ids[j], :]: embedding lookup and token selection.
template <typename U>
__device__ void gather_rows(const U* __restrict__ table, const unsigned* __restrict__ ids, U* __restrict__ out,
                            int n_ids, int width) {
    const unsigned total = static_cast<unsigned>(n_ids) * width;
    for (unsigned t = grid_thread(); t < total; t += grid_threads()) {
        const unsigned j = t / width, c = t % width;
        out[t] = table[static_cast<size_t>(__ldg(ids + j)) * width + c];
    }
}

// The adjoint of gather_rows, without atomics: out[r, :] = sum of dy[j, :] over the positions j
// with ids[j] == r, in increasing j. The host lists those positions per table row (CSR:
// positions[starts[r] .. starts[r + 1]]); one thread owns N adjacent columns of one table row,
// so every sum runs in a fixed order, in fp32. Rows no id refers to get zeros.
template <typename T, int N>
__device__ __forceinline__ void scatter_rows(const T* __restrict__ dy, const int* __restrict__ starts,
                                             const int* __restrict__ positions, T* __restrict__ out, int rows, int d) {
    const unsigned packs = d / N;
    const unsigned total = static_cast<unsigned>(rows) * packs;
    for (unsigned t = grid_thread(); t < total; t += grid_threads()) {
        const unsigned r = t / packs;
        const unsigned column = (t % packs) * N;
        float acc[N] = {};
        for (int k = __ldg(starts + r); k < __ldg(starts + r + 1); ++k) {
            float v[N];
            load_floats<T, N>(dy + static_cast<size_t>(__ldg(positions + k)) * d + column, v);
            for (int i = 0; i < N; ++i) acc[i] += v[i];
        }
        store_floats<T, N>(out + static_cast<size_t>(r) * d + column, acc);
    }
}

// `vec`: d is a multiple of the pack width.
template <typename T>
__device__ void index_rows_backward(const T* dy, const int* starts, const int* positions, T* out, int rows, int d,
                                    int vec) {
    if (vec) {
        scatter_rows<T, kPack<T>>(dy, starts, positions, out, rows, d);
    } else {
        scatter_rows<T, 1>(dy, starts, positions, out, rows, d);
    }
}

// The entry points, stamped out per access unit for the moves and per element type for the
// scatter-add, which does arithmetic (build.rs lists them after preprocessing).
#define MOVE_ENTRY_POINTS(U, SUFFIX)                                                                                   \
    extern "C" __global__ void copy_block_##SUFFIX(const U* src, int src_stride, U* dst, int dst_stride, int rows,     \
                                                   int width) {                                                        \
        copy_block(src, src_stride, dst, dst_stride, rows, width);                                                     \
    }                                                                                                                  \
    extern "C" __global__ void repeat_middle_##SUFFIX(const U* src, U* dst, int n, int total_rows, int width) {        \
        repeat_middle(src, dst, n, total_rows, width);                                                                 \
    }                                                                                                                  \
    extern "C" __global__ void permute_##SUFFIX(const U* src, U* dst, int n, int rank, const int* table) {             \
        permute(src, dst, n, rank, table);                                                                             \
    }                                                                                                                  \
    extern "C" __global__ void gather_rows_##SUFFIX(const U* table, const unsigned* ids, U* out, int n_ids,            \
                                                    int width) {                                                       \
        gather_rows(table, ids, out, n_ids, width);                                                                    \
    }

MOVE_ENTRY_POINTS(uint4, b16)
MOVE_ENTRY_POINTS(uint32_t, b4)
MOVE_ENTRY_POINTS(uint16_t, b2)

// Transposes move single elements (the innermost input dim becomes an outer one), so only the
// element sizes have entry points.
extern "C" __global__ void transpose_b4(const uint32_t* src, uint32_t* dst, int rows, int cols) {
    transpose(src, dst, rows, cols);
}
extern "C" __global__ void transpose_b2(const uint16_t* src, uint16_t* dst, int rows, int cols) {
    transpose(src, dst, rows, cols);
}

#define SCATTER_ENTRY_POINTS(T, SUFFIX)                                                                                \
    extern "C" __global__ void index_rows_backward_##SUFFIX(const T* dy, const int* starts, const int* positions,      \
                                                            T* out, int rows, int d, int vec) {                        \
        index_rows_backward(dy, starts, positions, out, rows, d, vec);                                                 \
    }

SCATTER_ENTRY_POINTS(float, f32)
SCATTER_ENTRY_POINTS(bf16, bf16)
