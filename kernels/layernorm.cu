// Residual add + LayerNorm, forward and backward, with fp32 statistics.
//
// One warp per row: rows of CLIP models are 512-1024 wide, so a warp covers one in 4-8 vector
// loads per lane and needs no shared memory or block barriers. Rows before `second_from_row` use
// gamma/beta; the rest use gamma2/beta2, so the image rows and the text rows of a modality-shared
// layer (each modality keeps its own LayerNorm) normalise in one launch.
#include "vector_io.cuh"

namespace {

constexpr int kWarpsPerBlock = 8;

// Forward of one row. Pass 1 forms x (+ residual), rounded to T as it is stored, and its sum;
// pass 2 the centred sum of squares (two passes: no cancellation for rows with a large mean);
// pass 3 normalises. Passes 2 and 3 re-read the row, which the L1 cache still holds. `vec`:
// the width is a multiple of the 16-byte pack, so every row is read in whole packs.
template <typename T>
__device__ void layernorm_row(const T* x, const T* residual, T* sum_out, T* y, float* mean_out, float* rstd_out,
                              const T* gamma, const T* beta, int width, float eps, bool vec) {
    const T* input = residual != nullptr ? sum_out : x;
    float sum = 0.0f;
    if (residual != nullptr) {
        row_map(x, residual, sum_out, width, vec, [&](int, float a, float b) {
            const float s = to_float(from_float<T>(a + b));
            sum += s;
            return s;
        });
    } else {
        row_visit(x, x, width, vec, [&](int, float v, float) { sum += v; });
    }
    // The sum written above is re-read by this lane only (same columns), so no barrier is needed.
    const float mean = warp_sum(sum) / width;
    float squares = 0.0f;
    row_visit(input, input, width, vec, [&](int, float v, float) { squares += (v - mean) * (v - mean); });
    const float rstd = rsqrtf(warp_sum(squares) / width + eps);
    row_map3(input, gamma, beta, y, width, vec,
             [&](int, float v, float g, float b) { return (v - mean) * rstd * g + b; });
    if (threadIdx.x % 32 == 0) {
        *mean_out = mean;
        *rstd_out = rstd;
    }
}

template <typename T>
__device__ void layernorm_forward(const T* x, const T* residual, T* sum_out, T* y, float* mean, float* rstd,
                                  const T* gamma, const T* beta, const T* gamma2, const T* beta2, int second_from_row,
                                  int rows, int width, float eps) {
    const bool vec = width % kPack<T> == 0;
    for_each_warp_row(rows, [&](int row) {
        const size_t at = static_cast<size_t>(row) * width;
        const bool second = row >= second_from_row;
        const T* r = residual != nullptr ? residual + at : nullptr;
        T* s = sum_out != nullptr ? sum_out + at : nullptr;
        layernorm_row<T>(x + at, r, s, y + at, mean + row, rstd + row, second ? gamma2 : gamma,
                         second ? beta2 : beta, width, eps, vec);
    });
}

// Backward. With xhat = (input - mean) * rstd and g = dy * gamma:
//   d input = rstd * (g - mean(g) - xhat * mean(g * xhat)),  d gamma = sum_rows dy * xhat,
//   d beta = sum_rows dy.
// Each block owns a contiguous range of rows inside one segment, a warp a few of them. A row is
// read twice in 16-byte packs: pass 1 forms the two row means, pass 2 (from L1) writes dx. A lane
// visits the same columns of every row, so it adds its share of the column sums into its own
// slots of the warp's shared-memory accumulator with no barrier; the block then adds its warps
// in warp order into its row of `partials` ([blocks][2][width], fp32), and the reduce kernel
// adds the blocks of each segment in a fixed order, so d gamma / d beta are deterministic.
//
// The accumulator slot of column j = p*N + k (pack p, element k) is k*pitch + p, pitch >= width/N:
// the lanes of a warp, one pack each, touch consecutive words on every update (column order
// would put lanes N words apart, an N-way bank conflict), and the nearest pitch = 32/N
// (mod 64/N) spreads the 32 columns that 32 threads read in the block's final pass over 32
// banks (k*pitch mod 32 is then 32/N times an odd number times k: distinct for k < N). Without
// packs (width not a multiple of N) the slot is j. Each of a warp's two sums takes words()
// floats (src/backend/gpu/layernorm.rs sizes shared memory the same way).
template <typename T>
struct SumSlots {
    static constexpr int N = kPack<T>;
    bool vec;
    int pitch;

    __device__ explicit SumSlots(int width) : vec(width % N == 0), pitch(0) {
        const int packs = width / N;
        constexpr int M = 64 / N;
        pitch = vec ? packs + (32 / N - packs % M + M) % M : width;
    }
    __device__ __forceinline__ int slot(int j) const { return vec ? (j % N) * pitch + j / N : j; }
    __device__ __forceinline__ int words() const { return vec ? N * pitch : pitch; }
};

template <typename T>
__device__ void layernorm_backward(const T* input, const T* gamma, const T* gamma2, const float* mean,
                                   const float* rstd, const T* dy, const T* dx_plus, T* dx, float* partials,
                                   int second_from_row, int rows, int width, int rows_per_block,
                                   int first_block_of_second) {
    MSCLIP_DYNAMIC_SMEM(float, column_sums);  // [kWarpsPerBlock][2][stride], slots as SumSlots
    const int warp = threadIdx.x / 32;
    const bool second_segment = static_cast<int>(blockIdx.x) >= first_block_of_second;
    const int segment_start = second_segment ? second_from_row : 0;
    const int segment_end = second_segment ? rows : second_from_row;
    const int block_in_segment = blockIdx.x - (second_segment ? first_block_of_second : 0);
    const int first = segment_start + block_in_segment * rows_per_block;
    const int last = min(first + rows_per_block, segment_end);
    const T* g = second_segment ? gamma2 : gamma;
    const SumSlots<T> slots(width);
    const bool vec = slots.vec;
    const int stride = slots.words();
    float* my_dgamma = column_sums + static_cast<size_t>(warp) * 2 * stride;
    float* my_dbeta = my_dgamma + stride;
    for (int c = threadIdx.x % 32; c < 2 * stride; c += 32) my_dgamma[c] = 0.0f;
    // A slot is zeroed by one lane and updated by another (the slot order is not the lanes'):
    // order the zeros before the updates.
    __syncwarp();
    for (int row = first + warp; row < last; row += kWarpsPerBlock) {
        const size_t at = static_cast<size_t>(row) * width;
        const float mu = mean[row];
        const float rs = rstd[row];
        float sum_g = 0.0f, sum_gx = 0.0f;
        row_visit3(input + at, dy + at, g, width, vec, [&](int, float v, float d, float gc) {
            const float gd = d * gc;
            sum_g += gd;
            sum_gx += gd * (v - mu) * rs;
        });
        const float mean_g = warp_sum(sum_g) / width;
        const float mean_gx = warp_sum(sum_gx) / width;
        // dx_plus (may be null): a gradient reaching the input by another path, added before dx is
        // rounded (the residual stream's own gradient, when the input is a fused residual sum).
        const T* plus = dx_plus != nullptr ? dx_plus + at : nullptr;
        row_map3_plus(input + at, dy + at, g, plus, dx + at, width, vec, [&](int j, float v, float d, float gc) {
            const float xhat = (v - mu) * rs;
            const int s = slots.slot(j);
            my_dgamma[s] += d * xhat;
            my_dbeta[s] += d;
            return rs * (d * gc - mean_g - xhat * mean_gx);
        });
    }
    __syncthreads();
    // Warps' column sums, added in warp order.
    float* out = partials + static_cast<size_t>(blockIdx.x) * 2 * width;
    for (int c = threadIdx.x; c < 2 * width; c += blockDim.x) {
        const int s = c < width ? slots.slot(c) : stride + slots.slot(c - width);
        float total = 0.0f;
        for (int w = 0; w < kWarpsPerBlock; ++w) total += column_sums[static_cast<size_t>(w) * 2 * stride + s];
        out[c] = total;
    }
}

// d gamma / d beta of each segment: the blocks' partial sums in a fixed order. Block
// (blockIdx.x, segment blockIdx.y) owns 32 of the 2*width partial columns (d gamma's, then d
// beta's); warp w adds the segment's partial rows w, w + 8, ... for its lane's column, and the
// block adds its warps in warp order. Many blocks and independent loads per warp: one thread
// per column walking every partial row in turn was a serial chain of hundreds of loads.
template <typename T>
__device__ void layernorm_reduce(const float* partials, T* dgamma, T* dbeta, T* dgamma2, T* dbeta2,
                                 int first_block_of_second, int blocks, int width) {
    __shared__ float warp_totals[kWarpsPerBlock][32];
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int c = blockIdx.x * 32 + lane;
    const int segment = blockIdx.y;
    const int begin = segment == 0 ? 0 : first_block_of_second;
    const int end = segment == 0 ? first_block_of_second : blocks;
    float total = 0.0f;
    if (c < 2 * width) {
        for (int b = begin + warp; b < end; b += kWarpsPerBlock) {
            total += partials[static_cast<size_t>(b) * 2 * width + c];
        }
    }
    warp_totals[warp][lane] = total;
    __syncthreads();
    if (warp != 0 || c >= 2 * width) return;
    total = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_totals[w][lane];
    T* dg = segment == 0 ? dgamma : dgamma2;
    T* db = segment == 0 ? dbeta : dbeta2;
    if (c < width) {
        dg[c] = from_float<T>(total);
    } else {
        db[c - width] = from_float<T>(total);
    }
}

}  // namespace

#define LAYERNORM_ENTRY_POINTS(T, SUFFIX)                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        layernorm_fwd_##SUFFIX(const T* x, const T* residual, T* sum_out, T* y, float* mean, float* rstd,            \
                               const T* gamma, const T* beta, const T* gamma2, const T* beta2, int second_from_row, \
                               int rows, int width, float eps) {                                                    \
        layernorm_forward<T>(x, residual, sum_out, y, mean, rstd, gamma, beta, gamma2, beta2, second_from_row, rows, \
                             width, eps);                                                                           \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        layernorm_bwd_##SUFFIX(const T* input, const T* gamma, const T* gamma2, const float* mean,                  \
                               const float* rstd, const T* dy, const T* dx_plus, T* dx, float* partials,            \
                               int second_from_row, int rows, int width, int rows_per_block,                        \
                               int first_block_of_second) {                                                         \
        layernorm_backward<T>(input, gamma, gamma2, mean, rstd, dy, dx_plus, dx, partials, second_from_row, rows,   \
                              width, rows_per_block, first_block_of_second);                                        \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        layernorm_reduce_##SUFFIX(const float* partials, T* dgamma, T* dbeta, T* dgamma2, T* dbeta2,                \
                                  int first_block_of_second, int blocks, int width) {                               \
        layernorm_reduce<T>(partials, dgamma, dbeta, dgamma2, dbeta2, first_block_of_second, blocks, width);        \
    }

LAYERNORM_ENTRY_POINTS(float, f32)
LAYERNORM_ENTRY_POINTS(bf16, bf16)
