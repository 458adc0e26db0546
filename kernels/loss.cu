// Mean cross-entropy of [rows, classes] logits against class indices, one warp per row with an
// fp32 log-sum-exp. A row whose target is IGNORE_TARGET (PyTorch's ignore_index) adds nothing and
// gets a zero gradient; the mean is over the other rows, counted here from the targets, so a
// captured graph whose target table is rewritten each step divides by that step's count. The
// mean itself is taken by the deterministic column sums of elementwise.cu over the per-row terms
// this kernel writes, so no atomics decide the order.
#include "vector_io.cuh"

constexpr unsigned IGNORE_TARGET = 0xffffffffu;

// The rows whose target is not ignored, counted by the whole warp (every lane gets the count);
// at least 1, so a batch of ignored rows has a zero loss rather than 0/0.
__device__ __forceinline__ float counted_rows(const unsigned* targets, int rows) {
    float count = 0.0f;
    for (int i = threadIdx.x % 32; i < rows; i += 32) count += targets[i] != IGNORE_TARGET ? 1.0f : 0.0f;
    return fmaxf(warp_sum(count), 1.0f);
}

// Per row: lse[row] = log sum_j exp(z[row, j]) (-inf for a row of -inf), and the row's share of
// the mean loss, terms[row] = (lse - z[row, target]) / counted rows (0 for an ignored row). `vec`:
// classes is a multiple of the pack width.
template <typename T>
__device__ void cross_entropy(const T* z, const unsigned* targets, float* lse, float* terms, int rows, int classes,
                              int vec) {
    const float count = counted_rows(targets, rows);
    for_each_warp_row(rows, [&](int row) {
        const T* logits = z + static_cast<size_t>(row) * classes;
        MaxSum lane_state;
        row_visit(logits, logits, classes, vec, [&](int, float v, float) { lane_state.add(v); });
        const MaxSum s = lane_state.warp_combine();
        if (threadIdx.x % 32 == 0) {
            const float row_lse = s.max == -INFINITY ? -INFINITY : s.max + logf(s.sum);
            const unsigned target = targets[row];
            lse[row] = row_lse;
            terms[row] = target == IGNORE_TARGET ? 0.0f : (row_lse - to_float(logits[target])) / count;
        }
    });
}

// dz[row, j] = (dloss / counted rows) * (softmax(z[row])[j] - [j == target]), the softmax
// recomputed from the saved fp32 log-sum-exp; zero on an ignored row.
template <typename T>
__device__ void cross_entropy_backward(const T* z, const float* lse, const unsigned* targets, const float* dloss,
                                       T* dz, int rows, int classes, int vec) {
    const float g = dloss[0] / counted_rows(targets, rows);
    for_each_warp_row(rows, [&](int row) {
        const size_t at = static_cast<size_t>(row) * classes;
        const float row_lse = lse[row];
        const unsigned target = targets[row];
        const float row_g = target == IGNORE_TARGET ? 0.0f : g;
        row_map(z + at, z + at, dz + at, classes, vec, [&](int j, float v, float) {
            return row_g * (expf(v - row_lse) - (static_cast<unsigned>(j) == target ? 1.0f : 0.0f));
        });
    });
}

// The entry points, stamped out per element type (build.rs lists them after preprocessing).
#define LOSS_ENTRY_POINTS(T, SUFFIX)                                                                                   \
    extern "C" __global__ void cross_entropy_##SUFFIX(const T* z, const unsigned* targets, float* lse, float* terms,   \
                                                      int rows, int classes, int vec) {                                \
        cross_entropy(z, targets, lse, terms, rows, classes, vec);                                                     \
    }                                                                                                                  \
    extern "C" __global__ void cross_entropy_backward_##SUFFIX(const T* z, const float* lse, const unsigned* targets,  \
                                                               const float* dloss, T* dz, int rows, int classes,       \
                                                               int vec) {                                              \
        cross_entropy_backward(z, lse, targets, dloss, dz, rows, classes, vec);                                        \
    }

LOSS_ENTRY_POINTS(float, f32)
LOSS_ENTRY_POINTS(bf16, bf16)
