"""The shapes of benches/cpu_ops.rs in numpy (float32), for the ratio in docs/benchmarks.md.

Run on the same machine right after `cargo bench --bench cpu_ops`:
    python3 benches/cpu_ops_numpy.py
Where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set for old OpenBLAS builds, unset both for
this command only (`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 ...`) so numpy
picks its best kernel; the script prints which OpenBLAS configuration it ran.
"""

import time

import numpy as np


def median_seconds(f):
    f()
    start = time.perf_counter()
    f()
    once = max(time.perf_counter() - start, 1e-6)
    reps = min(max(int(0.5 / once), 3), 200)
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[reps // 2]


def layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * rstd * gamma + beta, mean, rstd


def layer_norm_backward(x, gamma, mean, rstd, dy):
    xhat = (x - mean) * rstd
    gdy = gamma * dy
    dx = rstd * (gdy - gdy.mean(axis=-1, keepdims=True) - xhat * (gdy * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def main():
    try:
        from threadpoolctl import threadpool_info

        print("blas:", [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()])
    except ImportError:
        print("blas: (install threadpoolctl to see which kernel runs)")
    rng = np.random.default_rng(0)
    tokens = 1600
    print(f"{'op (float32, numpy)':<44} {'ms':>10} {'rate':>12}")
    for name, k, n in [("qkv in-proj", 768, 2304), ("attn out-proj", 768, 768), ("mlp c_fc", 768, 3072), ("mlp c_proj", 3072, 768)]:
        x = rng.standard_normal((tokens, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32) * 0.02
        b = rng.standard_normal(n, dtype=np.float32) * 0.02
        secs = median_seconds(lambda: x @ w.T + b)
        print(f"{f'linear {name} [{tokens}x{k}]x[{k}x{n}]':<44} {secs * 1e3:>10.3f} {2 * tokens * k * n / secs / 1e9:>7.1f} GFLOP/s")
    d = 768
    x = rng.standard_normal((tokens, d), dtype=np.float32)
    res = rng.standard_normal((tokens, d), dtype=np.float32)
    gamma = rng.standard_normal(d, dtype=np.float32)
    beta = rng.standard_normal(d, dtype=np.float32)
    nbytes = tokens * d * 4
    secs = median_seconds(lambda: layer_norm(x, gamma, beta))
    print(f"{f'layer_norm fwd [{tokens}x{d}]':<44} {secs * 1e3:>10.3f} {2 * nbytes / secs / 1e9:>7.1f} GB/s")
    _, mean, rstd = layer_norm(x, gamma, beta)
    secs = median_seconds(lambda: layer_norm_backward(x, gamma, mean, rstd, res))
    print(f"{f'layer_norm bwd [{tokens}x{d}]':<44} {secs * 1e3:>10.3f} {3 * nbytes / secs / 1e9:>7.1f} GB/s")
    secs = median_seconds(lambda: layer_norm(x + res, gamma, beta))
    print(f"{f'residual add, then layer_norm [{tokens}x{d}]':<44} {secs * 1e3:>10.3f} {4 * nbytes / secs / 1e9:>7.1f} GB/s")


if __name__ == "__main__":
    main()
